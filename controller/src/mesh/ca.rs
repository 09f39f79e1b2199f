//! The mesh CA from a Secret of the controller's cluster, or from files.
//!
//! ```text
//! load_or_create_ca(ns, name)  (at most MAX_ATTEMPTS rounds)
//!   GET Secret ── found ──► ca_from_secret: type kubernetes.io/tls, tls.crt + tls.key, a CA
//!      │                      whose key matches ─► Ca          (anything else: CaError::Malformed,
//!      │                                                        the Secret is left as it is)
//!      └─ 404 ─► Ca::generate(10 years) ─► POST Secret (managed-by: meridian)
//!                   ├─ 201 ─► that Ca
//!                   └─ 409 (another replica created it first) ─► GET again: everyone uses one CA
//! ```
//!
//! cert-manager's CA pattern fits as it is: a Certificate with `isCA: true` writes a
//! `kubernetes.io/tls` Secret whose `tls.crt`/`tls.key` are the CA and whose `ca.crt` is its
//! issuer's certificate (for a self-signed one, the same). The CA is `tls.crt`; `ca.crt` is not
//! needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use meridian_distribution::pki::{Ca, PkiError, TrustDomain};

use super::{MANAGED_BY, MANAGED_BY_LABEL};

/// How long a CA the controller creates is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Rounds of read-or-create before giving up (a Secret created and deleted again each time).
const MAX_ATTEMPTS: usize = 3;
/// The Secret type the CA is kept in.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Why the mesh CA could not be had. Messages name the Secret or file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The Secret exists but does not hold a usable CA; it is left untouched.
    #[error(
        "CA Secret {secret} cannot be used: {problem} (fix or delete it; a deleted one is \
         created again with a new CA)"
    )]
    Malformed {
        /// `namespace/name`.
        secret: String,
        /// What is wrong.
        problem: String,
    },
    /// The API server refused or failed a read or a create.
    #[error("CA Secret {secret}: {action}: {source}")]
    Api {
        /// `namespace/name`.
        secret: String,
        /// `reading it` or `creating it`.
        action: &'static str,
        /// Why (boxed: a kube error is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// Created and gone again, round after round.
    #[error(
        "CA Secret {0}: it was created but could not be read back after {MAX_ATTEMPTS} attempts"
    )]
    Vanishing(String),
    /// A CA file cannot be read.
    #[error("reading CA file {}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA files do not hold a usable CA.
    #[error("CA files {} and {}: {source}", .cert.display(), .key.display())]
    Files {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        #[source]
        source: PkiError,
    },
    /// Making or encoding a certificate failed.
    #[error("{what}: {source}")]
    Pki {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: PkiError,
    },
}

/// The CA a Secret holds (`fallback`: the trust domain when its certificate names none).
/// Pure: what is wrong comes back as a sentence for [`CaError::Malformed`].
pub fn ca_from_secret(secret: &Secret, fallback: &TrustDomain) -> Result<Ca, String> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != TLS_SECRET_TYPE {
        return Err(format!(
            "its type is {type_:?}, expected {TLS_SECRET_TYPE:?} with keys tls.crt and tls.key"
        ));
    }
    let data = secret.data.as_ref();
    let key = |k: &str| -> Result<&[u8], String> {
        match data.and_then(|d| d.get(k)) {
            Some(v) if !v.0.is_empty() => Ok(&v.0),
            Some(_) => Err(format!("data key {k} is empty")),
            None => Err(format!("data key {k} is missing")),
        }
    };
    let (cert, key) = (key("tls.crt")?, key("tls.key")?);
    Ca::from_pem(cert, key, fallback).map_err(|e| format!("tls.crt/tls.key: {e}"))
}

/// A new `kubernetes.io/tls` Secret holding `ca`, labelled as Meridian's.
pub fn ca_secret(namespace: &str, name: &str, ca: &Ca) -> Result<Secret, PkiError> {
    let data = [("tls.crt", ca.cert_pem()?), ("tls.key", ca.key_pem()?)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        data: Some(data),
        ..Secret::default()
    })
}

/// The mesh CA from Secret `namespace/name`, created with a new CA for `trust_domain` when
/// absent. Several replicas starting at once end up with the same CA: whoever creates the
/// Secret second gets a 409 and reads the first one's.
pub async fn load_or_create_ca(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &TrustDomain,
) -> Result<Ca, CaError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let id = format!("{namespace}/{name}");
    let api_err = |action, source| CaError::Api {
        secret: id.clone(),
        action,
        source: Box::new(source),
    };
    for _ in 0..MAX_ATTEMPTS {
        if let Some(secret) = api
            .get_opt(name)
            .await
            .map_err(|e| api_err("reading it", e))?
        {
            let ca =
                ca_from_secret(&secret, trust_domain).map_err(|problem| CaError::Malformed {
                    secret: id.clone(),
                    problem,
                })?;
            tracing::info!(secret = %id, trust_domain = %ca.trust_domain(), "mesh CA read");
            return Ok(ca);
        }
        let pki = |what: &str| {
            let what = what.to_string();
            move |source| CaError::Pki { what, source }
        };
        let ca = Ca::generate(trust_domain, CA_VALIDITY).map_err(pki("generating the mesh CA"))?;
        let secret = ca_secret(namespace, name, &ca).map_err(pki("encoding the mesh CA"))?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %id, trust_domain = %trust_domain, "mesh CA created");
                return Ok(ca);
            }
            // Another replica created it since our read: use theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(secret = %id, "mesh CA created by another replica meanwhile; reading it");
            }
            Err(e) => return Err(api_err("creating it", e)),
        }
    }
    Err(CaError::Vanishing(id))
}

/// The mesh CA from PEM files the user provides (e.g. exported from their own PKI).
pub fn ca_from_files(cert: &Path, key: &Path, fallback: &TrustDomain) -> Result<Ca, CaError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CaError::File {
            path: path.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    Ca::from_pem(&cert_pem, &key_pem, fallback).map_err(|source| CaError::Files {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    fn secret_with(type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
        Secret {
            type_: type_.map(str::to_string),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_secret_written_by_ca_secret_reads_back_as_the_same_ca() {
        let ca = Ca::generate(&TrustDomain::new("prod.mesh").unwrap(), CA_VALIDITY).unwrap();
        let s = ca_secret("meridian-system", "meridian-ca", &ca).unwrap();
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            MANAGED_BY
        );
        let back = ca_from_secret(&s, &td()).unwrap();
        assert_eq!(back.cert_pem().unwrap(), ca.cert_pem().unwrap());
        // The CA's own trust domain wins over the fallback.
        assert_eq!(back.trust_domain().as_str(), "prod.mesh");
    }

    #[test]
    fn cert_manager_secrets_with_ca_crt_are_read_from_tls_crt() {
        let ca = Ca::generate(&td(), CA_VALIDITY).unwrap();
        let (crt, key) = (ca.cert_pem().unwrap(), ca.key_pem().unwrap());
        let other = Ca::generate(&td(), CA_VALIDITY)
            .unwrap()
            .cert_pem()
            .unwrap();
        let s = secret_with(
            Some("kubernetes.io/tls"),
            &[("tls.crt", &crt), ("tls.key", &key), ("ca.crt", &other)],
        );
        assert_eq!(ca_from_secret(&s, &td()).unwrap().cert_pem().unwrap(), crt);
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong() {
        let ca = Ca::generate(&td(), CA_VALIDITY).unwrap();
        let (crt, key) = (ca.cert_pem().unwrap(), ca.key_pem().unwrap());
        let other_key = Ca::generate(&td(), CA_VALIDITY).unwrap().key_pem().unwrap();
        let cases: Vec<(Secret, &str)> = vec![
            (
                secret_with(Some("Opaque"), &[("tls.crt", &crt), ("tls.key", &key)]),
                "its type is \"Opaque\", expected \"kubernetes.io/tls\"",
            ),
            (secret_with(None, &[]), "its type is \"Opaque\""),
            (
                secret_with(Some("kubernetes.io/tls"), &[("tls.key", &key)]),
                "data key tls.crt is missing",
            ),
            (
                secret_with(
                    Some("kubernetes.io/tls"),
                    &[("tls.crt", &crt), ("tls.key", "")],
                ),
                "data key tls.key is empty",
            ),
            (
                secret_with(
                    Some("kubernetes.io/tls"),
                    &[("tls.crt", "not a certificate"), ("tls.key", &key)],
                ),
                "reading the CA certificate",
            ),
            (
                secret_with(
                    Some("kubernetes.io/tls"),
                    &[("tls.crt", &crt), ("tls.key", &other_key)],
                ),
                "does not belong to the CA certificate",
            ),
        ];
        for (s, want) in cases {
            let err = ca_from_secret(&s, &td()).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn a_leaf_certificate_is_no_ca() {
        let ca = Ca::generate(&td(), CA_VALIDITY).unwrap();
        let creds = ca
            .issue_server(
                &meridian_distribution::pki::Peer::Controller,
                &[],
                &[],
                Duration::from_secs(60),
            )
            .unwrap();
        let leaf = String::from_utf8(creds.leaf().to_pem().unwrap()).unwrap();
        let key = String::from_utf8(creds.key().private_key_to_pem_pkcs8().unwrap()).unwrap();
        let s = secret_with(
            Some("kubernetes.io/tls"),
            &[("tls.crt", &leaf), ("tls.key", &key)],
        );
        let err = ca_from_secret(&s, &td()).unwrap_err();
        assert!(err.contains("is not a CA"), "{err}");
    }

    #[test]
    fn ca_files_are_read_and_their_errors_name_the_files() {
        let dir = std::env::temp_dir().join(format!("meridian-mesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::generate(&td(), CA_VALIDITY).unwrap();
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&cert, ca.cert_pem().unwrap()).unwrap();
        std::fs::write(&key, ca.key_pem().unwrap()).unwrap();
        let back = ca_from_files(&cert, &key, &td()).unwrap();
        assert_eq!(back.cert_pem().unwrap(), ca.cert_pem().unwrap());

        let err = ca_from_files(&dir.join("absent.crt"), &key, &td())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("reading CA file ") && err.contains("absent.crt"),
            "{err}"
        );
        std::fs::write(&key, "garbage").unwrap();
        let err = ca_from_files(&cert, &key, &td()).unwrap_err().to_string();
        assert!(
            err.contains("ca.crt") && err.contains("ca.key") && err.contains("reading the CA key"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
