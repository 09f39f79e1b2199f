//! Measures one full translation of a synthetic world: 3 clusters, one Gateway per cluster with
//! 4 listeners, N HTTPRoutes spread over the clusters (2 rules each, one Service backend and one
//! ServiceImport backend), 3 endpoints per Service.
//!
//! How to run (N defaults to 1000; use a release build for representative numbers):
//!
//! ```text
//! cargo run -p meridian-controller --release --example translate_scale -- 10000
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use gateway_api::gatewayclasses::{GatewayClass, GatewayClassSpec};
use gateway_api::gateways::{Gateway, GatewayListeners, GatewaySpec};
use gateway_api::httproutes::*;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_controller::{
    CONTROLLER_NAME, ClusterGatewayRef, EastWestListeners, MissingRemote, ObjectKey,
    ProgrammedState, TranslateConfig, World, refresh_endpoints, translate,
};
use meridian_crds::mcs::{ServiceExport, ServiceExportSpec};

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        name: Some(name.to_string()),
        generation: Some(1),
        ..Default::default()
    }
}

fn main() -> Result<(), String> {
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|e| format!("route count {s:?}: {e}"))?,
        None => 1000,
    };
    let clusters = ["central", "east", "west"];
    let mut world = World::new();
    let mut cfg = TranslateConfig::default();
    for (ci, name) in clusters.iter().enumerate() {
        let c = world.add_cluster(*name, format!("region-{ci}"), vec![]);
        c.apply(GatewayClass {
            metadata: meta("", "meridian"),
            spec: GatewayClassSpec {
                controller_name: CONTROLLER_NAME.into(),
                description: None,
                parameters_ref: None,
            },
            status: None,
        });
        let listeners = (0..4)
            .map(|i| GatewayListeners {
                name: format!("l{i}"),
                port: 80,
                protocol: "HTTP".into(),
                hostname: Some(format!("*.zone{i}.example.com")),
                ..Default::default()
            })
            .collect();
        c.apply(Gateway {
            metadata: meta("apps", "gw"),
            spec: GatewaySpec {
                gateway_class_name: "meridian".into(),
                listeners,
                ..Default::default()
            },
            status: None,
        });
        let r = ClusterGatewayRef::new(*name, "apps", "gw");
        let ip: IpAddr = format!("10.0.{ci}.1").parse().map_err(|e| format!("{e}"))?;
        cfg.addresses.insert(r.clone(), vec![ip]);
        cfg.programmed.insert(r, ProgrammedState::Applied(1));
    }
    for i in 0..n {
        let cluster = clusters[i % clusters.len()];
        let c = world.cluster_mut(cluster).ok_or("cluster")?;
        let svc = format!("svc-{i}");
        c.apply(Service {
            metadata: meta("apps", &svc),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        });
        let mut m = meta("apps", &format!("{svc}-abc"));
        m.labels = Some(BTreeMap::from([(
            "kubernetes.io/service-name".to_string(),
            svc.clone(),
        )]));
        c.apply(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(
                (0..3)
                    .map(|e| Endpoint {
                        addresses: vec![format!("10.{}.{}.{}", 100 + e, (i / 250) % 250, i % 250)],
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        });
        if i % 10 == 0 {
            c.apply(ServiceExport {
                metadata: meta("apps", &svc),
                spec: ServiceExportSpec {},
                status: None,
            });
        }
        let rules = vec![
            HttpRouteRules {
                matches: Some(vec![HttpRouteRulesMatches {
                    path: Some(HttpRouteRulesMatchesPath {
                        r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                        value: Some(format!("/api/{i}")),
                    }),
                    ..Default::default()
                }]),
                backend_refs: Some(vec![HttpRouteRulesBackendRefs {
                    name: svc.clone(),
                    port: Some(80),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            HttpRouteRules {
                backend_refs: Some(vec![HttpRouteRulesBackendRefs {
                    group: Some("multicluster.x-k8s.io".into()),
                    kind: Some("ServiceImport".into()),
                    name: format!("svc-{}", (i / 10) * 10),
                    port: Some(80),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        ];
        c.apply(HttpRoute {
            metadata: meta("apps", &format!("route-{i}")),
            spec: HttpRouteSpec {
                hostnames: Some(vec![format!("r{i}.zone{}.example.com", i % 4)]),
                parent_refs: Some(vec![HttpRouteParentRefs {
                    name: "gw".into(),
                    ..Default::default()
                }]),
                rules: Some(rules),
            },
            status: None,
        });
    }

    for round in 0..3 {
        let start = Instant::now();
        let out = translate(&world, &cfg);
        let elapsed = start.elapsed();
        let routes: usize = out
            .snapshots
            .values()
            .flat_map(|s| &s.gateways)
            .flat_map(|g| &g.listeners)
            .map(|l| l.routes.len())
            .sum();
        println!(
            "round {round}: {n} HTTPRoutes over {} clusters translated in {:.1} ms ({routes} attached, {} status updates)",
            clusters.len(),
            elapsed.as_secs_f64() * 1000.0,
            out.status.len()
        );
    }

    // An EndpointSlice change of one exported Service (svc-0 lives in `central`, exported): patch
    // the previous snapshots instead of translating again.
    let mut snapshots = translate(&world, &cfg).snapshots;
    let key = ObjectKey::new("apps", "svc-0");
    let mut m = meta("apps", "svc-0-abc");
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        "svc-0".to_string(),
    )]));
    world
        .cluster_mut("central")
        .ok_or("cluster")?
        .apply(EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: Some(vec![Endpoint {
                addresses: vec!["10.200.0.1".into()],
                ..Default::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        });
    for round in 0..3 {
        let start = Instant::now();
        let changed = refresh_endpoints(
            &world,
            &mut snapshots,
            "central",
            &key,
            &EastWestListeners::new(),
            &mut MissingRemote::new(),
            &mut meridian_controller::AddressPolicy::default(),
        );
        let elapsed = start.elapsed();
        println!(
            "round {round}: endpoint refresh of one exported Service in {:.2} ms (clusters changed: {changed:?})",
            elapsed.as_secs_f64() * 1000.0
        );
    }
    // Peak resident memory of this process: the world (N routes, N Services, N slices) plus the
    // snapshots and status of the last translation. Linux only.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("{line}");
        }
    }
    Ok(())
}
