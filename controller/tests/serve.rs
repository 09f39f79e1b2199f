//! `meridian controller --distribution-bind` from the library: [`meridian_controller::serve`]
//! checks the distribution flags, starts the distribution server itself, and a Gateway is
//! Programmed only once a proxy connected to that server acknowledges it — on the address its
//! `--gateway-addresses` pool hands out; a proxy advertising an address outside that pool is
//! refused. A CA file that cannot be read, or a CA Secret that cannot be made in the first
//! member, stops it before anything listens. (`tests/secure_links.rs` at the workspace root runs
//! the real binaries with the CA Secret and bootstrap tokens.)
#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use meridian_controller::ControllerArgs;
use meridian_distribution::{Client, ClientConfig, Hello, Refused, Target};
use meridian_model::Snapshot;
use meridian_sandbox::{Sandbox, SandboxConfig};

use common::{
    ME, WAIT, apply, client_for, cond, eventually_async, gateway, gateway_class, gateway_obj,
    install_crds,
};
use meridian_test_support::{ScratchDir, free_port};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
}

/// A proxy that acknowledges every snapshot and serves nothing.
struct Ack;

impl Target for Ack {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        Ok(snapshot.generation)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_bind_starts_the_server_and_gateways_wait_for_proxy_acks() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let east = client_for(&sb.cluster("east").unwrap().url);
    install_crds(&east).await;
    let dir = ScratchDir::new("serve");
    let kubeconfig = dir.write("kubeconfig", &sb.kubeconfig_yaml());
    let bind = format!("127.0.0.1:{}", free_port());
    let argv = |extra: &[&str]| {
        let base = [
            "x",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cluster",
            "east@us-east",
            "--distribution-bind",
            &bind,
        ];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().args
    };

    // A CA that cannot be read is refused before anything starts (no listener on `bind`).
    let missing = dir.path().join("missing.crt");
    let missing = missing.to_str().unwrap();
    let err = meridian_controller::serve(
        argv(&["--ca-cert-file", missing, "--ca-key-file", missing]),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("mesh CA") && err.contains("missing.crt"),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(&bind).is_err());
    // Without CA files the CA lives in a Secret of the first member: a namespace that does
    // not exist there is a clear error, not an in-memory CA that a restart would replace.
    let err = meridian_controller::serve(argv(&["--ca-secret", "nowhere/meridian-ca"]), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CA Secret nowhere/meridian-ca")
            && err.contains("first member cluster \"east\"")
            && err.contains("--ca-cert-file"),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(&bind).is_err());
    // The mesh CA, as its Secret would hold it.
    let ca = common::test_ca();
    let ca_crt = dir.write("ca.crt", &ca.cert_pem().unwrap());
    let ca_key = dir.write("ca.key", &ca.key_pem().unwrap());

    apply::<GatewayClass>(&east, gateway_class("meridian", ME)).await;
    apply::<Gateway>(&east, gateway_obj("default", "web", "meridian")).await;
    let args = argv(&[
        "--ca-cert-file",
        ca_crt.to_str().unwrap(),
        "--ca-key-file",
        ca_key.to_str().unwrap(),
        "--distribution-name",
        "meridian.example",
        "--gateway-addresses",
        "east=127.0.10.5-127.0.10.6",
    ]);
    let controller = tokio::spawn(meridian_controller::serve(args, None));

    // No proxy yet: computed, not Programmed.
    eventually_async(
        "Programmed=False before any proxy connects",
        WAIT,
        || async {
            let gw = gateway(&east, "default", "web").await;
            let conds = gw.status.and_then(|s| s.conditions).unwrap_or_default();
            match cond(&conds, "Programmed") {
                Some(c) if c.status == "False" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let mut hello = Hello {
        proxy_id: "east-1".into(),
        cluster: "east".into(),
        region: "us-east".into(),
        zone: "us-east-a".into(),
        gateways: None,
        address: Some("127.0.10.1".into()),
        east_west: None,
    };
    let url = format!("https://{bind}");
    // An address outside the cluster's --gateway-addresses pool is refused (the pool is the
    // address policy): the proxy is told why and nothing is Programmed.
    let identity = common::proxy_identity(&hello);
    let outside = Client::new(ClientConfig::new(
        url.clone(),
        hello.clone(),
        identity,
        None,
    ))
    .unwrap();
    let mut outside_status = outside.status();
    let outside = tokio::spawn(async move { outside.run(&Ack).await });
    let why = tokio::time::timeout(WAIT, outside_status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .last_error
        .clone()
        .unwrap();
    assert!(why.contains("127.0.10.1"), "{why}");
    outside.abort();

    hello.address = Some("127.0.10.6".into());
    let identity = common::proxy_identity(&hello);
    let proxy = Client::new(ClientConfig::new(url, hello, identity, None)).unwrap();
    let proxy = tokio::spawn(async move { proxy.run(&Ack).await });

    // The proxy acknowledged: Programmed, on the first address of the cluster's pool (not the
    // proxy's advertised .6).
    let address = eventually_async(
        "Programmed=True once the proxy acknowledges",
        WAIT,
        || async {
            let gw = gateway(&east, "default", "web").await;
            let status = gw.status.unwrap_or_default();
            let conds = status.conditions.unwrap_or_default();
            match cond(&conds, "Programmed") {
                Some(c) if c.status == "True" => Ok(status
                    .addresses
                    .unwrap_or_default()
                    .first()
                    .map(|a| a.value.clone())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(address.as_deref(), Some("127.0.10.5"));

    proxy.abort();
    controller.abort();
    let _ = controller.await;
    sb.shutdown().await;
}
