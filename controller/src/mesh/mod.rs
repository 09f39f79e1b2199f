//! The controller side of mesh identity: the mesh CA, the trust bundle every member cluster
//! gets, and the controller's answers to the distribution server's two admission questions
//! (who may have a first certificate, which addresses a proxy may advertise).
//!
//! ```text
//!  --ca-secret NS/NAME ─► load_or_create_ca ─► Ca ─┬─► distribution server (issues certificates)
//!   (or ca_from_files)    absent: generate+create   └─► cert PEM ─► BundlePublisher
//!                         409: another replica won,                  ConfigMap meridian-ca (ca.crt)
//!                         read it again                               in every member cluster,
//!                                                                     re-applied when one joins
//!  proxy ─ POST /v1/certificate, Bearer <projected ServiceAccount token, audience "meridian">
//!        ─► TokenReviewVerifier::verify(claim)
//!             member cluster of claim.cluster (MeshMembers ◄── ControllerHandle::member_directory)
//!             ─► TokenReview {token, audiences: [meridian]} in that cluster
//!             ─► decide(): authenticated, audience, one of --proxy-service-account
//!             ─► BootstrapGrant {region, zones of the member, proxy id = bound pod name}
//!  hello address ─► PoolPolicy::allows(cluster, addr): inside the cluster's Gateway address
//!                   pool (--gateway-addresses or the member Secret's), anything without a pool
//! ```
//!
//! | module | owns |
//! |---|---|
//! | `args` | [`MeshArgs`]: `--ca-secret`, `--trust-domain`, `--proxy-service-account` |
//! | `ca` | reading, creating and checking the CA Secret; CA files |
//! | `bundle` | the `meridian-ca` ConfigMap in every member cluster |
//! | `verifier` | [`decide`] (pure) and [`TokenReviewVerifier`] |
//! | `policy` | [`PoolPolicy`] |
//!
//! Every decision is a pure function ([`ca_from_secret`], [`decide`], [`PoolPolicy::allows`],
//! the flag parsers); the I/O around them is thin. [`prepare`] builds the CA, the verifier and
//! the address policy for the distribution server in one call; once the controller runs,
//! [`Mesh::attach`] hands them its member clusters and starts the bundle publisher.

mod args;
mod bundle;
mod ca;
mod policy;
mod verifier;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use meridian_distribution::pki::Ca;
use meridian_distribution::server::{AddressPolicy, BootstrapVerifier};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::{MemberDirectory, MemberEntry};

pub use args::{MeshArgs, MeshArgsError, MeshConfig, ServiceAccountRef};
pub use bundle::{BundlePublisher, apply_bundle, bundle_configmap};
pub use ca::{CaError, ca_from_files, ca_from_secret, ca_secret, load_or_create_ca};
pub use policy::PoolPolicy;
pub use verifier::{TokenReviewVerifier, decide};

/// The audience proxies' projected ServiceAccount tokens are minted for; the verifier asks
/// for exactly this one, so a token for the Kubernetes API itself (or any other audience) is
/// not a bootstrap credential.
pub const PROXY_TOKEN_AUDIENCE: &str = "meridian";
/// The ConfigMap holding the mesh CA certificate in every member cluster.
pub const BUNDLE_CONFIGMAP: &str = "meridian-ca";
/// Its data key: proxies mount it as `--ca-file`.
pub const BUNDLE_KEY: &str = "ca.crt";
/// Name of the CA Secret when `--ca-secret` is not given (in the controller's namespace).
pub const DEFAULT_CA_SECRET: &str = "meridian-ca";
/// The ServiceAccount proxies run as when `--proxy-service-account` is not given.
pub const DEFAULT_PROXY_SERVICE_ACCOUNT: &str = "meridian-system/meridian-proxy";
/// Label on what the controller creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "meridian";
/// Extra of a TokenReview's user naming the Pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The member clusters the verifier and the address policy look up, attached once the
/// controller runs ([`Mesh::attach`]); cheap to clone. Before that every lookup finds nothing
/// (the verifier answers "try again": the distribution server starts before the controller).
#[derive(Clone, Default)]
pub struct MeshMembers {
    directory: Arc<OnceLock<watch::Receiver<MemberDirectory>>>,
}

impl std::fmt::Debug for MeshMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshMembers")
            .field("attached", &self.is_attached())
            .finish()
    }
}

impl MeshMembers {
    /// Members that follow `directory` from the start.
    pub fn new(directory: watch::Receiver<MemberDirectory>) -> Self {
        let m = Self::default();
        m.attach(directory);
        m
    }

    /// Follows `directory` from now on (the first call wins; later ones change nothing).
    pub fn attach(&self, directory: watch::Receiver<MemberDirectory>) {
        let _ = self.directory.set(directory);
    }

    /// Whether a directory is attached.
    pub fn is_attached(&self) -> bool {
        self.directory.get().is_some()
    }

    /// Member cluster `name` now.
    pub fn get(&self, name: &str) -> Option<MemberEntry> {
        self.directory.get()?.borrow().get(name).cloned()
    }
}

/// Where the mesh CA comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A `kubernetes.io/tls` Secret of the controller's cluster, created when absent.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// PEM files the user provides (nothing is created).
    Files {
        /// The CA certificate.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

/// What the distribution server needs from the controller for mesh identity ([`prepare`]).
pub struct Mesh {
    /// The mesh CA: issues the server's and the proxies' certificates.
    pub ca: Arc<Ca>,
    /// Verifies bootstrap credentials with TokenReviews.
    pub verifier: Arc<dyn BootstrapVerifier>,
    /// Which addresses proxies may advertise.
    pub addresses: Arc<dyn AddressPolicy>,
    /// What the verifier and the policy look clusters up in; [`Mesh::attach`] fills it.
    pub members: MeshMembers,
    /// Namespace of the trust bundle ConfigMap in every member cluster.
    pub bundle_namespace: String,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("ca", &self.ca)
            .field("members", &self.members)
            .field("bundle_namespace", &self.bundle_namespace)
            .finish_non_exhaustive()
    }
}

/// Why the mesh identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A flag is unusable.
    #[error(transparent)]
    Args(#[from] MeshArgsError),
    /// `--gateway-addresses` is unusable.
    #[error(transparent)]
    Pools(#[from] crate::args::ArgsError),
    /// The CA cannot be read or created.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The CA (from `source`, or the `--ca-secret` Secret read or created through `home`, the
/// controller's own cluster), the TokenReview verifier and the pool address policy, ready for
/// the distribution server. The verifier and policy know no cluster until [`Mesh::attach`].
pub async fn prepare(
    args: &crate::ControllerArgs,
    home: kube::Client,
    source: Option<CaSource>,
) -> Result<Mesh, MeshError> {
    let namespace = crate::members::own_namespace_from_env(None);
    let cfg = args.mesh.resolve(&namespace)?;
    let source = source.unwrap_or(CaSource::Secret {
        namespace: cfg.ca_secret.0.clone(),
        name: cfg.ca_secret.1.clone(),
    });
    let ca = match &source {
        CaSource::Secret { namespace, name } => {
            load_or_create_ca(home, namespace, name, &cfg.trust_domain).await?
        }
        CaSource::Files { cert, key } => ca_from_files(cert, key, &cfg.trust_domain)?,
    };
    if ca.trust_domain() != &cfg.trust_domain {
        tracing::warn!(ca = %ca.trust_domain(), flag = %cfg.trust_domain, "the CA names another trust domain than --trust-domain: the CA's is used");
    }
    let members = MeshMembers::default();
    let static_pools: BTreeMap<String, crate::AddressRange> =
        crate::args::gateway_address_ranges(&args.gateway_addresses)?
            .into_iter()
            .collect();
    Ok(Mesh {
        ca: Arc::new(ca),
        verifier: Arc::new(TokenReviewVerifier::new(
            members.clone(),
            cfg.proxy_service_accounts,
        )),
        addresses: Arc::new(PoolPolicy::new(static_pools, members.clone())),
        members,
        bundle_namespace: namespace,
    })
}

impl Mesh {
    /// The CA, the verifier and the address policy, as the distribution server takes them.
    pub fn parts(&self) -> (Arc<Ca>, Arc<dyn BootstrapVerifier>, Arc<dyn AddressPolicy>) {
        (
            Arc::clone(&self.ca),
            Arc::clone(&self.verifier),
            Arc::clone(&self.addresses),
        )
    }

    /// Hands the verifier and the address policy the running controller's member clusters and
    /// starts publishing the trust bundle to each of them (until `shutdown` turns true).
    pub fn attach(
        &self,
        directory: watch::Receiver<MemberDirectory>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>, CaError> {
        self.members.attach(directory.clone());
        let pem = self.ca.cert_pem().map_err(|source| CaError::Pki {
            what: "encoding the CA certificate for the trust bundle".into(),
            source,
        })?;
        Ok(BundlePublisher::new(self.bundle_namespace.clone(), pem).spawn(directory, shutdown))
    }
}
