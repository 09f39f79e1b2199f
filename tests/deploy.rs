//! `deploy/` and the `Dockerfile` are what a platform team installs: they must render, name only
//! what the binary really has, and hold the security settings their comments promise.
//!
//! ```text
//! kubectl kustomize deploy/overlays/<region> ─► objects ─► checks per kind
//!   every Deployment: non-root, read-only root filesystem, no capabilities, probes, resources,
//!     a PodDisruptionBudget selecting it; its args are flags `meridian <cmd> --help` knows
//!   each overlay: its own cluster/region; exactly one runs the controller
//! crds/Kustomization ─ lists exactly what `meridian crds --write` renders
//! Dockerfile ─ parsed: toolchain = rust-toolchain.toml, the build packages ./dev installs,
//!   a locked release build of the binary, a non-root runtime stage
//! ```
//!
//! Applying the manifests to an API server is tested in `deploy_apply.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

const OVERLAYS: [&str; 3] = ["us-east", "us-west", "eu-central"];

/// The objects `kubectl kustomize DIR` renders, as JSON values.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .output()
        .expect("kubectl is needed to render deploy/");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap()
}

/// Long flags `meridian <cmd> --help` lists.
fn known_flags(cmd: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([cmd, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "meridian {cmd} --help failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A container whose admin listener (`proxy --admin`, `controller --metrics`) is bound beyond
/// loopback passes `--admin-token-file` naming a file in a mounted Secret, and the pod's
/// `fsGroup` is its group, so the non-root process can read the root-owned Secret file.
/// Without the token the controller's `/v1/` endpoints answer 403 on such an address.
fn admin_listener_needs_a_readable_token(who: &str, pod: &Value, c: &Value) {
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |f: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{f}=")));
    let admin = match args[0] {
        "proxy" => flag("admin"),
        "controller" => flag("metrics"),
        _ => None,
    };
    let Some(admin) = admin else { return };
    if admin.starts_with("127.") || admin.starts_with("[::1]") {
        return;
    }
    let file = flag("admin-token-file")
        .unwrap_or_else(|| panic!("{who}: admin listener {admin} without --admin-token-file"));
    let (dir, _) = file.rsplit_once('/').unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == dir))
        .unwrap_or_else(|| panic!("{who}: nothing is mounted at {dir} for {file}"));
    assert_eq!(mount["readOnly"], true, "{who}: {dir}");
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .unwrap_or_else(|| panic!("{who}: volume {} is missing", mount["name"]));
    assert!(
        volume["secret"]["secretName"]
            .as_str()
            .is_some_and(|s| s.ends_with("-admin-token")),
        "{who}: {file} is not from an admin-token Secret"
    );
    let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    assert_eq!(
        mode & 0o007,
        0,
        "{who}: the token must not be world-readable"
    );
    assert_ne!(mode & 0o040, 0, "{who}: the token must be group-readable");
    let security = &pod["securityContext"];
    assert!(
        security["fsGroup"].is_u64() && security["fsGroup"] == security["runAsGroup"],
        "{who}: fsGroup must be the process's group, or it cannot read the Secret"
    );
}

#[test]
fn every_overlay_renders_hardened_deployments_with_budgets_and_known_flags() {
    let mut controllers = 0;
    for overlay in OVERLAYS {
        let objects = render(&format!("deploy/overlays/{overlay}"));
        let member = of_kind(&objects, "ConfigMap")
            .into_iter()
            .find(|c| name(c) == "meridian-member")
            .unwrap_or_else(|| panic!("{overlay}: no meridian-member ConfigMap"));
        assert_eq!(member["data"]["region"], overlay, "{overlay}: region");
        assert_ne!(member["data"]["cluster"], "CHANGE-ME", "{overlay}: cluster");

        for o in &objects {
            let kind = o["kind"].as_str().unwrap();
            let scoped = !matches!(
                kind,
                "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            );
            if scoped {
                assert_eq!(
                    o["metadata"]["namespace"],
                    "meridian-system",
                    "{overlay}: {kind} {} is not in meridian-system",
                    name(o)
                );
            }
        }

        let budgets = of_kind(&objects, "PodDisruptionBudget");
        for d in of_kind(&objects, "Deployment") {
            let who = format!("{overlay}: Deployment {}", name(d));
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{who}");
            let containers = pod["containers"].as_array().unwrap();
            for c in containers {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
                assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{who}");
                assert!(c["livenessProbe"].is_object(), "{who}: liveness probe");
                assert!(c["readinessProbe"].is_object(), "{who}: readiness probe");
                assert!(c["resources"]["requests"].is_object(), "{who}: requests");
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{who}: limit"
                );

                let args: Vec<&str> = c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                let known = known_flags(args[0]);
                for flag in args[1..].iter().filter_map(|a| a.strip_prefix("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        known.contains(flag),
                        "{who}: `meridian {} --{flag}` is not a flag of the binary",
                        args[0]
                    );
                }
            }
            for c in containers {
                admin_listener_needs_a_readable_token(&who, pod, c);
            }
            let labels = &d["spec"]["selector"]["matchLabels"];
            assert!(
                budgets
                    .iter()
                    .any(|b| &b["spec"]["selector"]["matchLabels"] == labels),
                "{who}: no PodDisruptionBudget selects it"
            );
            if name(d) == "meridian-controller" {
                controllers += 1;
                assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2, "{who}: HA");
            }
        }
    }
    assert_eq!(controllers, 1, "exactly one overlay runs the controller");
}

#[test]
fn crds_kustomization_lists_exactly_what_the_binary_renders() {
    let dir = std::env::temp_dir().join(format!("meridian-crds-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["crds", "--write"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let rendered: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    let listed: BTreeSet<String> = std::fs::read_to_string("crds/Kustomization")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(str::to_string)
        .collect();
    assert_eq!(listed, rendered);
}

/// One instruction of a Dockerfile: keyword and its (continuation-joined) arguments.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (kw, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((kw.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_builds_the_pinned_toolchain_into_a_non_root_image() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let ins = instructions(&text);
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );

    let toolchain = std::fs::read_to_string("rust-toolchain.toml").unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        froms[0].starts_with(&format!("rust:{channel}-")) && froms[0].ends_with(" AS build"),
        "the build stage uses the pinned toolchain {channel}: {}",
        froms[0]
    );

    // The build stage installs what ./dev installs for the build (nft is for tests only).
    let dev = std::fs::read_to_string("dev").unwrap();
    let runs: String = ins
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for pkg in ["cmake", "pkg-config", "libssl-dev"] {
        assert!(
            dev.contains(&format!("\"{pkg}:")),
            "./dev no longer installs {pkg}"
        );
        assert!(runs.contains(pkg), "the Dockerfile does not install {pkg}");
    }
    assert!(runs.contains("cargo build --release --locked --bin meridian"));

    // The runtime stage: after the last FROM, a numeric non-root user and the binary.
    let last_from = ins.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &ins[last_from..];
    let user = runtime
        .iter()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .expect("the runtime stage sets USER");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the image runs as root");
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "COPY" && a.starts_with("--from=build") && a.contains("meridian")),
        "the runtime stage copies the binary from the build stage"
    );
    let entry = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .unwrap();
    let entry: Vec<String> = serde_json::from_str(entry).unwrap();
    assert!(entry[0].ends_with("/meridian"));

    // The image's uid is the one the manifests run as.
    for overlay in OVERLAYS {
        for d in of_kind(&render(&format!("deploy/overlays/{overlay}")), "Deployment") {
            assert_eq!(
                d["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
                uid,
                "{overlay}: {}",
                name(d)
            );
        }
    }

    // Only sources go into the build context.
    let ignore = std::fs::read_to_string(".dockerignore").unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The indented command lines of README's "Install on real clusters" section.
fn readme_install_commands() -> Vec<String> {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = readme
        .split("## Install on real clusters")
        .nth(1)
        .expect("README has an \"Install on real clusters\" section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_install_section_names_commands_that_exist() {
    let commands = readme_install_commands();
    assert!(commands.len() >= 8, "{commands:?}");
    let mut applied = BTreeSet::new();
    let mut added = BTreeSet::new();
    for cmd in &commands {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words[0] {
            "docker" => assert!(matches!(words[1], "build" | "push"), "{cmd}"),
            "kubectl" => {
                if let Some(i) = words.iter().position(|w| *w == "-k") {
                    let dir = words[i + 1];
                    assert!(Path::new(dir).join("kustomization.yaml").exists(), "{cmd}");
                    applied.insert(dir.to_string());
                }
            }
            "meridian" => {
                // Every flag of the command line is one `meridian <sub> <sub2> --help` lists.
                let sub: Vec<&str> = words[1..]
                    .iter()
                    .take_while(|w| !w.starts_with('-'))
                    .copied()
                    .collect();
                let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
                    .args(&sub[..sub.len().min(2)])
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{cmd}: `meridian {sub:?} --help` fails"
                );
                let help = String::from_utf8(out.stdout).unwrap();
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    assert!(help.contains(*flag), "{cmd}: {flag} is not a flag");
                }
                if sub[..2] == ["cluster", "add"] {
                    added.insert(sub[2].to_string());
                }
            }
            other if other.starts_with("TOKEN=") => {}
            other => panic!("README install step runs {other:?}, which this test does not know"),
        }
    }
    // The controller's overlay and at least one other member, which is then added.
    assert!(applied.contains("deploy/overlays/us-east"), "{applied:?}");
    assert!(applied.len() >= 2);
    assert!(!added.is_empty());

    // docs/deploy.md walks through the same commands.
    let guide = std::fs::read_to_string("docs/deploy.md").unwrap();
    for cmd in commands
        .iter()
        .filter(|c| c.starts_with("meridian ") || c.starts_with("docker "))
    {
        assert!(guide.contains(cmd.as_str()), "docs/deploy.md lacks `{cmd}`");
    }
}

/// The `ServiceAccount` subjects of the bindings (of `kind`) that grant role `role`.
fn bound_to<'a>(objects: &'a [Value], kind: &str, role: &str) -> BTreeSet<&'a str> {
    of_kind(objects, kind)
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == role)
        .flat_map(|b| b["subjects"].as_array().unwrap())
        .filter(|s| s["kind"] == "ServiceAccount")
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

/// The one rule of role `name` (of `kind`), as (groups, resources, resourceNames, verbs).
fn rules_of(objects: &[Value], kind: &str, name: &str) -> Vec<[Vec<String>; 4]> {
    let role = of_kind(objects, kind)
        .into_iter()
        .find(|r| self::name(r) == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            [
                list(&r["apiGroups"]),
                list(&r["resources"]),
                list(&r["resourceNames"]),
                list(&r["verbs"]),
            ]
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Mesh identity in every overlay: the proxy bootstraps with a projected token for the audience
/// the controller's verifier asks for and trusts the ConfigMap the controller publishes; the
/// roles for TokenReviews and the bundle are bound to the controller's and the remote identity;
/// only the controller's cluster has the CA Secret's role; no shared token is left.
#[test]
fn proxies_bootstrap_with_a_projected_token_and_trust_the_mesh_ca() {
    use meridian_controller::mesh::{BUNDLE_CONFIGMAP, BUNDLE_KEY, PROXY_TOKEN_AUDIENCE};

    let mut ca_secret_roles = 0;
    for overlay in OVERLAYS {
        let objects = render(&format!("deploy/overlays/{overlay}"));
        let text = serde_json::to_string(&objects).unwrap();
        assert!(
            !text.contains("meridian-distribution-token") && !text.contains("MERIDIAN_TOKEN"),
            "{overlay}: the shared distribution token is still referenced"
        );
        let member = of_kind(&objects, "ConfigMap")
            .into_iter()
            .find(|c| name(c) == "meridian-member")
            .unwrap();
        let url = member["data"]["controller-url"].as_str().unwrap();
        assert!(url.starts_with("https://"), "{overlay}: {url}");

        let proxy = of_kind(&objects, "Deployment")
            .into_iter()
            .find(|d| name(d) == "meridian-proxy")
            .unwrap();
        let pod = &proxy["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "meridian-proxy", "{overlay}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{overlay}");
        let volumes = pod["volumes"].as_array().unwrap();
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let flag = |f: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{f}=")))
                .unwrap_or_else(|| panic!("{overlay}: proxy has no --{f}"))
                .to_string()
        };
        assert!(!args.iter().any(|a| a.starts_with("--token")), "{overlay}");
        let mount_of = |volume: &str| -> String {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume)
                .map(|m| {
                    assert_eq!(m["readOnly"], true, "{overlay}: {volume}");
                    m["mountPath"].as_str().unwrap().to_string()
                })
                .unwrap_or_else(|| panic!("{overlay}: {volume} is not mounted"))
        };

        // The projected token: audience, lifetime, and the file --bootstrap-token-file reads.
        let (token_volume, source) = volumes
            .iter()
            .find_map(|v| {
                let sources = v["projected"]["sources"].as_array()?;
                let s = sources
                    .iter()
                    .find(|s| s["serviceAccountToken"].is_object())?;
                Some((v["name"].as_str().unwrap(), &s["serviceAccountToken"]))
            })
            .unwrap_or_else(|| panic!("{overlay}: no projected ServiceAccount token"));
        assert_eq!(source["audience"], PROXY_TOKEN_AUDIENCE, "{overlay}");
        assert_eq!(source["expirationSeconds"], 3600, "{overlay}");
        let token_file = format!(
            "{}/{}",
            mount_of(token_volume),
            source["path"].as_str().unwrap()
        );
        assert_eq!(token_file, "/var/run/secrets/meridian/token");
        assert_eq!(flag("bootstrap-token-file"), token_file, "{overlay}");

        // The trust bundle ConfigMap, and the file --ca-file reads.
        let ca_volume = volumes
            .iter()
            .find(|v| v["configMap"]["name"] == BUNDLE_CONFIGMAP)
            .unwrap_or_else(|| panic!("{overlay}: {BUNDLE_CONFIGMAP} is not a volume"));
        let item = &ca_volume["configMap"]["items"][0];
        assert_eq!(item["key"], BUNDLE_KEY, "{overlay}");
        let ca_file = format!(
            "{}/{}",
            mount_of(ca_volume["name"].as_str().unwrap()),
            item["path"].as_str().unwrap()
        );
        assert_eq!(ca_file, "/etc/meridian/ca/ca.crt");
        assert_eq!(flag("ca-file"), ca_file, "{overlay}");

        // Roles: TokenReviews and the bundle for both controller identities, nothing for proxies.
        let both = BTreeSet::from(["meridian-controller", "meridian-remote"]);
        assert_eq!(
            rules_of(&objects, "ClusterRole", "meridian-token-reviewer"),
            vec![[
                strings(&["authentication.k8s.io"]),
                strings(&["tokenreviews"]),
                vec![],
                strings(&["create"]),
            ]]
        );
        assert_eq!(
            bound_to(&objects, "ClusterRoleBinding", "meridian-token-reviewer"),
            both
        );
        assert_eq!(
            rules_of(&objects, "Role", "meridian-ca-bundle"),
            vec![[
                strings(&[""]),
                strings(&["configmaps"]),
                strings(&[BUNDLE_CONFIGMAP]),
                strings(&["patch"]),
            ]]
        );
        assert_eq!(
            bound_to(&objects, "RoleBinding", "meridian-ca-bundle"),
            both
        );
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            for b in of_kind(&objects, kind) {
                let subjects = b["subjects"].as_array().unwrap();
                assert!(
                    !subjects.iter().any(|s| s["name"] == "meridian-proxy"),
                    "{overlay}: {kind} {} grants the proxy something",
                    name(b)
                );
            }
        }
        let controller_here = of_kind(&objects, "Deployment")
            .iter()
            .any(|d| name(d) == "meridian-controller");
        let has_secret_role = of_kind(&objects, "Role")
            .iter()
            .any(|r| name(r) == "meridian-ca-secret");
        assert_eq!(controller_here, has_secret_role, "{overlay}");
        if has_secret_role {
            ca_secret_roles += 1;
            assert_eq!(
                rules_of(&objects, "Role", "meridian-ca-secret"),
                vec![
                    [
                        strings(&[""]),
                        strings(&["secrets"]),
                        strings(&["meridian-ca"]),
                        strings(&["get"]),
                    ],
                    [
                        strings(&[""]),
                        strings(&["secrets"]),
                        vec![],
                        strings(&["create"]),
                    ],
                ]
            );
            assert_eq!(
                bound_to(&objects, "RoleBinding", "meridian-ca-secret"),
                BTreeSet::from(["meridian-controller"])
            );
        }
    }
    assert_eq!(ca_secret_roles, 1);
}
