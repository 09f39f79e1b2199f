//! `meridian cluster add|list|remove`: member-cluster Secrets from the command line.
//!
//! ```text
//! meridian cluster add east --kubeconfig F --context C --region us-east --controller-context CC
//!   member cluster (context C):  ClusterRole meridian-controller present?  (else: apply deploy/ first)
//!                                ServiceAccount NS/meridian-remote         (server-side apply)
//!                                ClusterRoleBinding meridian-remote → ClusterRole meridian-controller
//!                                TokenRequest for NS/meridian-remote (--token-ttl, default 8760h)
//!   kubeconfig = C's server URL and CA + that token      (never the user's own credentials)
//!   controller cluster (context CC): Secret NS/meridian-cluster-east (server-side apply), checked
//!                                with the controller's own parser before it is written
//! meridian cluster list   [--controller-context CC]   table of the Secrets (invalid ones say why)
//! meridian cluster remove east [--controller-context CC]
//! ```
//!
//! Removing a Secret does not revoke its token (it expires after `--token-ttl`); deleting the
//! ServiceAccount `meridian-remote` in the member cluster revokes every token minted for it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

use super::{
    CLUSTER_ANNOTATION, DEFAULT_NAMESPACE, MEMBER_LABEL, MEMBER_LABEL_VALUE, MemberSecretError,
    MemberSpec, REGION_ANNOTATION, member_secret, parse_member_secret,
};
use crate::distributed::addresses::AddressRange;

/// The member cluster's ServiceAccount whose token goes into the Secret.
pub const REMOTE_ACCOUNT: &str = "meridian-remote";
/// The ClusterRole deploy/ installs, bound to [`REMOTE_ACCOUNT`].
pub const CONTROLLER_ROLE: &str = "meridian-controller";
/// Field manager of what `meridian cluster add` applies.
pub const FIELD_MANAGER: &str = "meridian-cluster";
/// The shortest token lifetime the TokenRequest API accepts.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// `meridian cluster …`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// The `meridian cluster` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Make a cluster a member: a dedicated service-account token of it goes into a Secret the
    /// controller reads.
    Add(AddArgs),
    /// List the member-cluster Secrets.
    List(ControllerTarget),
    /// Remove a member cluster's Secret (the controller stops watching it).
    Remove(RemoveArgs),
}

/// Where the controller runs (the cluster holding the member Secrets).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerTarget {
    /// Kubeconfig of the controller's cluster (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub controller_kubeconfig: Option<PathBuf>,
    /// Context of the controller's cluster (default: the kubeconfig's current context).
    #[arg(long, value_name = "CONTEXT")]
    pub controller_context: Option<String>,
    /// Namespace of the controller and its member Secrets (and of the member cluster's
    /// ServiceAccount).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// `meridian cluster add`.
#[derive(clap::Args, Debug, Clone)]
pub struct AddArgs {
    /// The member cluster's name (a DNS label).
    #[arg(value_parser = parse_cluster_name)]
    pub name: String,
    /// Kubeconfig with the member cluster's context (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The member cluster's context (default: the kubeconfig's current context).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// The member cluster's region.
    #[arg(long)]
    pub region: String,
    /// Its zones.
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
    /// The network of its pod IPs (default: the network every cluster shares).
    #[arg(long)]
    pub network: Option<String>,
    /// Addresses for its Gateways (`A.B.C.D-A.B.C.E` or `A.B.C.D/N`).
    #[arg(long, value_name = "RANGE")]
    pub gateway_addresses: Option<AddressRange>,
    /// Lifetime of the minted token (at least 10m).
    #[arg(long, default_value = "8760h", value_parser = crate::args::parse_duration)]
    pub token_ttl: Duration,
    /// The controller's cluster; --controller-context is required (the member's kubeconfig
    /// is used when --controller-kubeconfig is not given).
    #[command(flatten)]
    pub controller: ControllerTarget,
}

/// `meridian cluster remove`.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoveArgs {
    /// The member cluster's name.
    pub name: String,
    /// The controller's cluster.
    #[command(flatten)]
    pub controller: ControllerTarget,
}

fn parse_cluster_name(s: &str) -> Result<String, String> {
    crate::args::check_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// What went wrong in `meridian cluster`.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCmdError {
    /// A kubeconfig cannot be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file (or `$KUBECONFIG`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A flag value is refused.
    #[error("{0}")]
    Flag(String),
    /// The member cluster lacks deploy/'s ClusterRole.
    #[error(
        "ClusterRole {CONTROLLER_ROLE} is not in the member cluster (context {context}): apply \
         deploy/ there first (kubectl --context {context} apply -k deploy/overlays/REGION), then \
         run this again"
    )]
    ClusterRoleMissing {
        /// The member's context.
        context: String,
    },
    /// An API call failed.
    #[error("{step} (context {context}): {source}")]
    Api {
        /// What was being done.
        step: String,
        /// The context it was done in.
        context: String,
        /// The API's error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// The TokenRequest answer had no token.
    #[error("the TokenRequest for {0} was answered without a token")]
    NoToken(String),
    /// The Secret would not be accepted by the controller.
    #[error("the Secret for cluster {cluster} would be refused by the controller: {source}")]
    Secret {
        /// The cluster.
        cluster: String,
        /// Why.
        #[source]
        source: MemberSecretError,
    },
    /// No Secret describes the cluster.
    #[error(
        "no member-cluster Secret for cluster {cluster:?} in namespace {namespace} \
         (`meridian cluster list` shows them)"
    )]
    NotFound {
        /// The cluster.
        cluster: String,
        /// The namespace searched.
        namespace: String,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// What the member's kubeconfig context says about reaching its API server (its credentials
/// are left behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEndpoint {
    /// The context it came from.
    pub context: String,
    /// API server URL.
    pub server: String,
    /// The CA bundle, base64 (from `certificate-authority-data`, or the file it names).
    pub ca_data: Option<String>,
    /// `insecure-skip-tls-verify` as the user's kubeconfig has it.
    pub insecure_skip_tls_verify: bool,
    /// `tls-server-name` as the user's kubeconfig has it.
    pub tls_server_name: Option<String>,
}

fn kubeconfig_error(path: &str, message: impl ToString) -> ClusterCmdError {
    ClusterCmdError::Kubeconfig {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// Reads a kubeconfig file, or the default ones; returns it with a name for messages.
pub fn load_kubeconfig(path: Option<&Path>) -> Result<(Kubeconfig, String), ClusterCmdError> {
    match path {
        Some(p) => {
            let name = p.display().to_string();
            Kubeconfig::read_from(p)
                .map(|k| (k, name.clone()))
                .map_err(|e| kubeconfig_error(&name, e))
        }
        None => {
            let name = "($KUBECONFIG or ~/.kube/config)";
            Kubeconfig::read()
                .map(|k| (k, name.to_string()))
                .map_err(|e| kubeconfig_error(name, e))
        }
    }
}

fn resolve_context(
    k: &Kubeconfig,
    path: &str,
    context: Option<&str>,
) -> Result<String, ClusterCmdError> {
    let name = context
        .map(str::to_string)
        .or_else(|| k.current_context.clone().filter(|c| !c.is_empty()))
        .ok_or_else(|| kubeconfig_error(path, "no current-context: pass --context"))?;
    if !k.contexts.iter().any(|c| c.name == name) {
        let known: Vec<&str> = k.contexts.iter().map(|c| c.name.as_str()).collect();
        return Err(kubeconfig_error(
            path,
            format!(
                "no context {name:?} (contexts: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    Ok(name)
}

/// The server and CA of `context` (a CA file is read and inlined).
pub fn member_endpoint(
    k: &Kubeconfig,
    path: &str,
    context: Option<&str>,
) -> Result<MemberEndpoint, ClusterCmdError> {
    let context = resolve_context(k, path, context)?;
    let cluster_name = k
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| kubeconfig_error(path, format!("context {context:?} has no cluster")))?;
    let cluster = k
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            kubeconfig_error(
                path,
                format!("context {context:?} names cluster {cluster_name:?}, which is not defined"),
            )
        })?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| kubeconfig_error(path, format!("cluster {cluster_name:?} has no server")))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(data.clone()),
        (None, Some(file)) => {
            let pem = std::fs::read(file).map_err(|e| {
                kubeconfig_error(
                    path,
                    format!("cluster {cluster_name:?}: reading certificate-authority {file}: {e}"),
                )
            })?;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };
    Ok(MemberEndpoint {
        context,
        server,
        ca_data,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
        tls_server_name: cluster.tls_server_name.clone(),
    })
}

/// A kubeconfig reaching `endpoint` as the holder of `token`, with one context named `cluster`.
pub fn remote_kubeconfig(cluster: &str, endpoint: &MemberEndpoint, token: &str) -> String {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), json!(endpoint.server));
    if let Some(ca) = &endpoint.ca_data {
        c.insert("certificate-authority-data".into(), json!(ca));
    }
    if endpoint.insecure_skip_tls_verify {
        c.insert("insecure-skip-tls-verify".into(), json!(true));
    }
    if let Some(name) = &endpoint.tls_server_name {
        c.insert("tls-server-name".into(), json!(name));
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": c}],
        "users": [{"name": REMOTE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": REMOTE_ACCOUNT}}],
        "current-context": cluster,
    });
    // A JSON value of strings, maps and lists always serializes.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

/// A client for `context` of `k`.
pub async fn client_for(
    k: &Kubeconfig,
    path: &str,
    context: &str,
) -> Result<Client, ClusterCmdError> {
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(k.clone(), &options)
        .await
        .map_err(|e| kubeconfig_error(path, format!("context {context:?}: {e}")))?;
    Client::try_from(config)
        .map_err(|e| kubeconfig_error(path, format!("context {context:?}: {e}")))
}

fn api_error(
    step: impl Into<String>,
    context: &str,
) -> impl FnOnce(kube::Error) -> ClusterCmdError {
    let step = step.into();
    let context = context.to_string();
    move |source| ClusterCmdError::Api {
        step,
        context,
        source: Box::new(source),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Makes sure ServiceAccount `namespace/meridian-remote` exists in the member cluster and is
/// bound to ClusterRole `meridian-controller` (which deploy/ installs: without it, an error
/// saying so).
pub async fn ensure_remote_account(
    client: &Client,
    context: &str,
    namespace: &str,
) -> Result<(), ClusterCmdError> {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    match roles.get(CONTROLLER_ROLE).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            return Err(ClusterCmdError::ClusterRoleMissing {
                context: context.to_string(),
            });
        }
        Err(e) => {
            return Err(api_error(
                format!("reading ClusterRole {CONTROLLER_ROLE}"),
                context,
            )(e));
        }
    }
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": REMOTE_ACCOUNT, "namespace": namespace},
    });
    accounts
        .patch(REMOTE_ACCOUNT, &apply, &Patch::Apply(&account))
        .await
        .map_err(api_error(
            format!("applying ServiceAccount {namespace}/{REMOTE_ACCOUNT}"),
            context,
        ))?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": REMOTE_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": REMOTE_ACCOUNT, "namespace": namespace}],
    });
    bindings
        .patch(REMOTE_ACCOUNT, &apply, &Patch::Apply(&binding))
        .await
        .map_err(api_error(
            format!("applying ClusterRoleBinding {REMOTE_ACCOUNT}"),
            context,
        ))?;
    Ok(())
}

/// A token of `namespace/meridian-remote` valid for `ttl`, from the TokenRequest API.
pub async fn mint_token(
    client: &Client,
    context: &str,
    namespace: &str,
    ttl: Duration,
) -> Result<String, ClusterCmdError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(REMOTE_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(api_error(
            format!("requesting a token for {namespace}/{REMOTE_ACCOUNT}"),
            context,
        ))?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ClusterCmdError::NoToken(format!("{namespace}/{REMOTE_ACCOUNT}")))
}

/// Writes (creates or replaces, by server-side apply) a member Secret in the controller's
/// cluster.
pub async fn write_member_secret(
    client: &Client,
    context: &str,
    secret: &Secret,
) -> Result<(), ClusterCmdError> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut body =
        serde_json::to_value(secret).map_err(|e| ClusterCmdError::Flag(e.to_string()))?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(api_error(
        format!("writing Secret {namespace}/{name}"),
        context,
    ))?;
    Ok(())
}

async fn member_secrets(
    client: &Client,
    context: &str,
    namespace: &str,
) -> Result<Vec<Secret>, ClusterCmdError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{MEMBER_LABEL}={MEMBER_LABEL_VALUE}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(
            format!("listing member Secrets in namespace {namespace}"),
            context,
        ))?;
    Ok(list.items)
}

/// The rows of `meridian cluster list`: cluster, region, network, server, Secret. An invalid
/// Secret says why in the server column.
pub fn list_rows(secrets: &[Secret]) -> Vec<[String; 5]> {
    let mut rows: Vec<[String; 5]> = secrets
        .iter()
        .map(|s| match parse_member_secret(s) {
            Ok(p) => [
                p.spec.name,
                p.spec.region,
                if p.spec.network.is_empty() {
                    "-".to_string()
                } else {
                    p.spec.network
                },
                p.server,
                s.name_any(),
            ],
            Err(e) => {
                let annotation = |key: &str| {
                    s.annotations()
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| "-".to_string())
                };
                [
                    annotation(CLUSTER_ANNOTATION),
                    annotation(REGION_ANNOTATION),
                    "-".to_string(),
                    format!("INVALID: {e}"),
                    s.name_any(),
                ]
            }
        })
        .collect();
    rows.sort();
    rows
}

/// A table with a header row, columns padded to their widest cell.
pub fn render_table(header: [&str; 5], rows: &[[String; 5]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for row in rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

async fn controller_client(
    target: &ControllerTarget,
    fallback: Option<&Path>,
) -> Result<(Client, String), ClusterCmdError> {
    let (k, path) = load_kubeconfig(target.controller_kubeconfig.as_deref().or(fallback))?;
    let context = resolve_context(&k, &path, target.controller_context.as_deref())?;
    let client = client_for(&k, &path, &context).await?;
    Ok((client, context))
}

/// `meridian cluster add`.
pub async fn add(args: &AddArgs, out: &mut dyn Write) -> Result<(), ClusterCmdError> {
    if args.token_ttl < MIN_TOKEN_TTL {
        return Err(ClusterCmdError::Flag(format!(
            "--token-ttl {:?} is too short: the TokenRequest API needs at least 10m",
            args.token_ttl
        )));
    }
    if args.controller.controller_context.is_none() {
        return Err(ClusterCmdError::Flag(
            "--controller-context is required: the context of the cluster the controller runs in"
                .into(),
        ));
    }
    let network = args.network.clone().unwrap_or_default();
    if !network.is_empty() {
        crate::args::check_network(&network).map_err(|e| ClusterCmdError::Flag(e.to_string()))?;
    }
    let spec = MemberSpec {
        name: args.name.clone(),
        region: args.region.clone(),
        zones: args.zones.clone(),
        network,
        gateway_addresses: args.gateway_addresses,
    };
    let ns = &args.controller.namespace;
    let (member_kc, path) = load_kubeconfig(args.kubeconfig.as_deref())?;
    let endpoint = member_endpoint(&member_kc, &path, args.context.as_deref())?;
    let member = client_for(&member_kc, &path, &endpoint.context).await?;
    ensure_remote_account(&member, &endpoint.context, ns).await?;
    let token = mint_token(&member, &endpoint.context, ns, args.token_ttl).await?;
    let kubeconfig = remote_kubeconfig(&spec.name, &endpoint, &token);
    let secret = member_secret(ns, &spec, &kubeconfig);
    // The controller's own parser has the last word before anything is written.
    parse_member_secret(&secret).map_err(|source| ClusterCmdError::Secret {
        cluster: spec.name.clone(),
        source,
    })?;
    let (controller, context) =
        controller_client(&args.controller, args.kubeconfig.as_deref()).await?;
    write_member_secret(&controller, &context, &secret).await?;
    writeln!(
        out,
        "cluster {}: Secret {ns}/{} written in context {context} (server {}, token of \
         {ns}/{REMOTE_ACCOUNT} valid for {}h)",
        spec.name,
        secret.name_any(),
        endpoint.server,
        args.token_ttl.as_secs() / 3600
    )?;
    Ok(())
}

/// `meridian cluster list`.
pub async fn list(target: &ControllerTarget, out: &mut dyn Write) -> Result<(), ClusterCmdError> {
    let (client, context) = controller_client(target, None).await?;
    let secrets = member_secrets(&client, &context, &target.namespace).await?;
    let rows = list_rows(&secrets);
    out.write_all(
        render_table(["NAME", "REGION", "NETWORK", "SERVER", "SECRET"], &rows).as_bytes(),
    )?;
    Ok(())
}

/// `meridian cluster remove`: deletes every member Secret naming the cluster.
pub async fn remove(args: &RemoveArgs, out: &mut dyn Write) -> Result<(), ClusterCmdError> {
    let ns = &args.controller.namespace;
    let (client, context) = controller_client(&args.controller, None).await?;
    let secrets = member_secrets(&client, &context, ns).await?;
    let names: Vec<String> = secrets
        .iter()
        .filter(|s| {
            s.annotations().get(CLUSTER_ANNOTATION).map(|c| c.trim()) == Some(args.name.as_str())
        })
        .map(|s| s.name_any())
        .collect();
    if names.is_empty() {
        return Err(ClusterCmdError::NotFound {
            cluster: args.name.clone(),
            namespace: ns.clone(),
        });
    }
    let api: Api<Secret> = Api::namespaced(client, ns);
    for name in names {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            // Someone else removed it meanwhile: that is what was asked.
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(api_error(format!("deleting Secret {ns}/{name}"), &context)(
                    e,
                ));
            }
        }
        writeln!(
            out,
            "cluster {}: Secret {ns}/{name} deleted (its token stays valid until it expires; \
             delete ServiceAccount {ns}/{REMOTE_ACCOUNT} in the member cluster to revoke it now)",
            args.name
        )?;
    }
    Ok(())
}

/// Runs `meridian cluster …`, printing to stdout.
pub async fn run(args: ClusterArgs) -> Result<(), ClusterCmdError> {
    let mut out = std::io::stdout();
    match &args.command {
        ClusterCommand::Add(a) => add(a, &mut out).await,
        ClusterCommand::List(t) => list(t, &mut out).await,
        ClusterCommand::Remove(r) => remove(r, &mut out).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const USER_KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: prod-east
  cluster: {server: 'https://east.example:6443', certificate-authority-data: Q0E=, tls-server-name: api.east}
- name: nowhere
  cluster: {certificate-authority: /nonexistent/ca.crt, server: 'https://x:1'}
users:
- name: admin
  user: {token: users-own-admin-token, client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
contexts:
- name: east-admin
  context: {cluster: prod-east, user: admin}
- name: broken
  context: {cluster: nowhere, user: admin}
current-context: east-admin
";

    #[test]
    fn endpoint_takes_server_and_ca_and_leaves_the_users_credentials() {
        let k = Kubeconfig::from_yaml(USER_KUBECONFIG).unwrap();
        let ep = member_endpoint(&k, "f", None).unwrap();
        assert_eq!(
            ep,
            MemberEndpoint {
                context: "east-admin".into(),
                server: "https://east.example:6443".into(),
                ca_data: Some("Q0E=".into()),
                insecure_skip_tls_verify: false,
                tls_server_name: Some("api.east".into()),
            }
        );
        let yaml = remote_kubeconfig("east", &ep, "minted-token");
        assert!(
            !yaml.contains("users-own-admin-token") && !yaml.contains("Q0VSVA=="),
            "{yaml}"
        );
        // What the controller will read: the minted token, the member's server and CA.
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("east"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://east.example:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("api.east"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(
            user.token.is_some() && yaml.contains("token: minted-token"),
            "{yaml}"
        );
        assert!(user.client_certificate_data.is_none() && user.client_key_data.is_none());
    }

    #[test]
    fn endpoint_errors_say_what_is_missing() {
        let k = Kubeconfig::from_yaml(USER_KUBECONFIG).unwrap();
        let e = member_endpoint(&k, "f", Some("west"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no context \"west\" (contexts: east-admin, broken)"),
            "{e}"
        );
        let e = member_endpoint(&k, "f", Some("broken"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reading certificate-authority /nonexistent/ca.crt"),
            "{e}"
        );
        let mut none = k.clone();
        none.current_context = None;
        let e = member_endpoint(&none, "f", None).unwrap_err().to_string();
        assert!(e.contains("no current-context: pass --context"), "{e}");
    }

    #[test]
    fn table_lists_valid_and_invalid_secrets() {
        let ep = MemberEndpoint {
            context: "c".into(),
            server: "https://east.example:6443".into(),
            ca_data: None,
            insecure_skip_tls_verify: false,
            tls_server_name: None,
        };
        let spec = MemberSpec {
            name: "east".into(),
            region: "us-east".into(),
            zones: vec![],
            network: "net-a".into(),
            gateway_addresses: None,
        };
        let good = member_secret("ns", &spec, &remote_kubeconfig("east", &ep, "t"));
        let mut bad = member_secret(
            "ns",
            &MemberSpec {
                name: "west".into(),
                ..spec
            },
            "x",
        );
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(REGION_ANNOTATION);
        let table = render_table(
            ["NAME", "REGION", "NETWORK", "SERVER", "SECRET"],
            &list_rows(&[bad, good]),
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("NAME   REGION    NETWORK   SERVER"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("east   us-east   net-a     https://east.example:6443")
                && lines[1].ends_with("meridian-cluster-east"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("west   -")
                && lines[2].contains("INVALID: annotation meridian.dev/region is missing"),
            "{table}"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClusterCommand,
    }

    #[test]
    fn add_flags() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "x",
            "add",
            "east",
            "--context",
            "c",
            "--region",
            "us-east",
            "--zones",
            "a,b",
            "--gateway-addresses",
            "10.0.0.0/24",
            "--controller-context",
            "cc",
        ])
        .unwrap();
        let ClusterCommand::Add(a) = cli.command else {
            panic!("not add")
        };
        assert_eq!(a.zones, ["a", "b"]);
        assert_eq!(a.token_ttl, Duration::from_secs(8760 * 3600));
        assert_eq!(a.controller.namespace, DEFAULT_NAMESPACE);
        assert!(Cli::try_parse_from(["x", "add", "East", "--region", "r"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "add", "east"]).is_err(),
            "--region is required"
        );
    }
}
