//! `meridian controller --distribution-bind` from the library: [`meridian_controller::serve`]
//! checks the distribution flags, starts the distribution server itself, and a Gateway is
//! Programmed only once a proxy connected to that server acknowledges it — on the address its
//! `--gateway-addresses` pool hands out.
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

    // Without a token the flags are refused before anything starts (no listener on `bind`).
    let err = meridian_controller::serve(argv(&[]), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--distribution-bind needs --token"), "{err}");
    assert!(std::net::TcpStream::connect(&bind).is_err());

    apply::<GatewayClass>(&east, gateway_class("meridian", ME)).await;
    apply::<Gateway>(&east, gateway_obj("default", "web", "meridian")).await;
    let args = argv(&[
        "--token",
        "s3cret",
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

    let hello = Hello {
        proxy_id: "east-1".into(),
        cluster: "east".into(),
        region: "us-east".into(),
        zone: "us-east-a".into(),
        gateways: None,
        address: Some("127.0.10.1".into()),
        east_west: None,
    };
    let url = format!("http://{bind}");
    let proxy = Client::new(ClientConfig::new(url, Some("s3cret".into()), hello)).unwrap();
    let proxy = tokio::spawn(async move { proxy.run(&Ack).await });

    // The proxy acknowledged: Programmed, on the first address of the cluster's pool (not the
    // proxy's advertised one).
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
