//! Step 3 of a drill: the load runs; after the warmup the FailoverDrill is created, its status
//! is followed, and the load stops `--after` past the restore (or at the hard stop).
//!
//! ```text
//!  load::start ─► samples ─┬─► every second: live line (req/s, share per region, errors, phase)
//!                          └─► kept for the figures
//!  Driver: warmup over ─► create the drill ─► poll its status every 250 ms ─► restoreTime
//!          known ─► stop = restore + after;  Ctrl-C ─► delete the drill, stop now
//! ```

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use meridian_crds::meridian::{
    DrillGuards, DrillObjectRef, DrillScope, DrillTargetSpec, FailoverDrill, FailoverDrillSpec,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::{DrillArgs, Plan, gw_duration};
use crate::cluster::{self, ClusterError, DrillView, GatewayTarget};
use crate::figures::{FailKind, Outcome, Sample};
use crate::load::{self, LoadConfig, ServedBySource};
use crate::openloop::{LoadError, Summary};
use crate::preflight::Setup;
use crate::{DrillError, error_chain};

/// Past the planned end of the load (warmup + duration + after), how long the load may go on
/// waiting for the restore before it stops anyway.
const SLACK: Duration = Duration::from_secs(30);

/// The FailoverDrill object.
pub(crate) fn drill_object(
    name: &str,
    gw: &GatewayTarget,
    p: &Plan,
    args: &DrillArgs,
) -> FailoverDrill {
    let guards = DrillGuards {
        // Whole percents as integers, anything else as the decimal string the CRD accepts.
        max_error_percent: args.guard_error_percent.map(|pct| {
            if pct.fract() == 0.0 {
                IntOrString::Int(pct as i32)
            } else {
                IntOrString::String(pct.to_string())
            }
        }),
        max_p99_latency: p.guard_p99.map(gw_duration),
        window: p.guard_window.map(gw_duration),
        min_requests: None,
    };
    let spec = FailoverDrillSpec {
        target: DrillTargetSpec {
            cluster: p.target.cluster.clone(),
            region: p.target.region.clone(),
            zone: p.target.zone.clone(),
        },
        scope: Some(DrillScope {
            gateways: vec![DrillObjectRef {
                namespace: Some(gw.namespace.clone()),
                name: gw.name.clone(),
            }],
            service_imports: Vec::new(),
        }),
        mode: Some(args.mode),
        duration: Some(gw_duration(p.duration)),
        guards: (guards != DrillGuards::default()).then_some(guards),
    };
    let mut d = FailoverDrill::new(name, spec);
    d.metadata.namespace = Some(gw.namespace.clone());
    d.metadata.labels = Some(
        [(
            "app.kubernetes.io/created-by".to_string(),
            "meridian-drill".to_string(),
        )]
        .into(),
    );
    d
}

pub(crate) fn wall_offset_ms(t0_wall: Timestamp, at: Option<&str>) -> Option<f64> {
    let ts = Timestamp::from_str(at?).ok()?;
    let d = ts.duration_since(t0_wall);
    Some(d.as_secs_f64() * 1000.0)
}

fn live_line(elapsed: Duration, window: &[Sample], phase: &str) -> String {
    let mut regions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut answered = 0u64;
    let mut failed: BTreeMap<FailKind, u64> = BTreeMap::new();
    for s in window {
        match &s.outcome {
            Outcome::Answered(by) => {
                answered += 1;
                *regions.entry(by.region_label()).or_default() += 1;
            }
            Outcome::Failed(k) => *failed.entry(*k).or_default() += 1,
        }
    }
    let share = regions
        .iter()
        .map(|(r, n)| format!("{r} {:.0}%", *n as f64 * 100.0 / answered.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" · ");
    let errors: u64 = failed.values().sum();
    let detail = failed
        .iter()
        .map(|(k, n)| format!("{n} {}", k.label()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:>5.1}s  {:>5} req/s  {}  errors {errors}{}  drill {}",
        elapsed.as_secs_f64(),
        window.len(),
        if share.is_empty() { "-".into() } else { share },
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        },
        if phase.is_empty() { "-" } else { phase }
    )
}

/// What the load saw and the drill as last read.
pub(crate) struct Observed {
    pub(crate) samples: Vec<Sample>,
    /// When the FailoverDrill was created, ms since the load started.
    pub(crate) created_ms: Option<f64>,
    pub(crate) view: DrillView,
    pub(crate) interrupted: bool,
    /// Wall-clock time of the load's time 0 (status times are mapped onto the load clock).
    pub(crate) t0_wall: Timestamp,
    pub(crate) sources: Arc<ServedBySource>,
}

/// The drill's side of the load loop: creating the FailoverDrill, following its status and moving
/// the load's stop time.
struct Driver<'a> {
    s: &'a Setup,
    name: &'a str,
    t0: Instant,
    t0_wall: Timestamp,
    stop: tokio::sync::watch::Sender<Instant>,
    /// Whether the stop time was moved off the hard stop (it is moved once).
    stop_set: bool,
    created_ms: Option<f64>,
    view: DrillView,
    last_phase: String,
    interrupted: bool,
    /// The drill could not be created: the load stops and the run ends with this.
    create_error: Option<ClusterError>,
}

impl Driver<'_> {
    fn stop_now(&mut self) {
        let _ = self.stop.send(Instant::now());
        self.stop_set = true;
    }

    /// After the warmup: create the drill (a refusal stops the load and ends the run).
    async fn create(&mut self, obj: &FailoverDrill) {
        self.created_ms = Some(self.t0.elapsed().as_secs_f64() * 1000.0);
        if let Err(e) = cluster::create_drill(&self.s.home, obj).await {
            self.stop_now();
            self.create_error = Some(e);
        } else {
            println!("drill {}/{} created", self.s.gw.namespace, self.name);
        }
    }

    /// Whether the drill's status is worth reading now.
    fn polling(&self) -> bool {
        self.created_ms.is_some() && self.create_error.is_none() && !self.interrupted
    }

    /// Reads the drill's status, prints phase changes, and once the restore moment is known stops
    /// the load `--after` past it.
    async fn poll_status(&mut self) {
        let gw = &self.s.gw;
        match cluster::get_drill(&self.s.home, &gw.namespace, self.name).await {
            Ok(v) => self.view = v,
            Err(e) => println!("drill status not read: {}", error_chain(&e)),
        }
        let view = &self.view;
        if view.phase != self.last_phase {
            println!(
                "drill phase {}{}",
                view.phase,
                view.abort_reason
                    .as_ref()
                    .or(view.message.as_ref())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            self.last_phase = view.phase.clone();
        }
        if !self.stop_set {
            if let Some(ms) = wall_offset_ms(self.t0_wall, self.view.restore_time.as_deref()) {
                let restore = self.t0 + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
                let _ = self.stop.send(restore + self.s.p.after);
                self.stop_set = true;
            } else if self.view.finished() {
                // Over without a restore: nothing was failed, nothing to watch.
                self.stop_now();
            }
        }
    }

    /// Ctrl-C: delete the drill (the controller restores the target) and stop the load.
    async fn interrupt(&mut self) {
        self.interrupted = true;
        println!("interrupted: deleting the drill (the controller restores the target)");
        if self.created_ms.is_some()
            && let Err(e) =
                cluster::delete_drill(&self.s.home, &self.s.gw.namespace, self.name).await
        {
            println!("{}", error_chain(&e));
        }
        self.stop_now();
    }

    /// The load stops `after` past the restore; the drill completes right after that.
    async fn await_completion(&mut self) {
        if self.created_ms.is_none() || self.interrupted {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.view.finished() && Instant::now() < deadline {
            if let Ok(v) = cluster::get_drill(&self.s.home, &self.s.gw.namespace, self.name).await {
                self.view = v;
            }
            if !self.view.finished() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// The load loop: samples are kept (and shown once a second), the drill is created after
    /// the warmup and followed, Ctrl-C interrupts; until the load has sent its last request and
    /// every answer is in. Returns every sample.
    async fn follow(
        &mut self,
        mut samples_rx: mpsc::UnboundedReceiver<Sample>,
        mut done: tokio::task::JoinHandle<Result<Summary, LoadError>>,
        drill_obj: &FailoverDrill,
    ) -> Result<Vec<Sample>, DrillError> {
        let mut samples: Vec<Sample> = Vec::new();
        let mut window: Vec<Sample> = Vec::new();
        let t0 = self.t0;
        let create_at = t0 + self.s.p.warmup;
        let mut tick =
            tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        // Bounded: the load ends by the hard stop plus the request timeout.
        let ended = loop {
            tokio::select! {
                ended = &mut done => break ended,
                s = samples_rx.recv() => {
                    if let Some(s) = s {
                        window.push(s.clone());
                        samples.push(s);
                    }
                }
                _ = tick.tick() => {
                    println!("{}", live_line(t0.elapsed(), &window, &self.view.phase));
                    window.clear();
                }
                _ = tokio::time::sleep_until(create_at), if self.created_ms.is_none() => {
                    self.create(drill_obj).await;
                }
                _ = poll.tick(), if self.polling() => self.poll_status().await,
                _ = &mut ctrl_c, if !self.interrupted => self.interrupt().await,
            }
        };
        while let Ok(s) = samples_rx.try_recv() {
            samples.push(s);
        }
        if let Some(e) = self.create_error.take() {
            return Err(e.into());
        }
        ended.map_err(LoadError::Task)??;
        Ok(samples)
    }
}

/// Step 3: the load runs; after the warmup the drill is created, its status is followed, and
/// the load stops `--after` past the restore (or at the hard stop).
pub(crate) async fn drive(args: &DrillArgs, s: &Setup, name: &str) -> Result<Observed, DrillError> {
    let p = &s.p;
    let t0 = Instant::now() + Duration::from_millis(100);
    let t0_wall = Timestamp::now() + Duration::from_millis(100);
    let hard_stop = t0 + p.warmup + p.duration + p.after + SLACK;
    let cfg = LoadConfig {
        url: s.url.clone(),
        host: s.host.clone(),
        rate: p.rate,
        timeout: p.timeout,
        max_in_flight: args.max_in_flight,
    };
    let load::Load {
        samples,
        stop,
        sources,
        done,
    } = load::start(cfg, t0, hard_stop, hard_stop).await?;
    let mut d = Driver {
        s,
        name,
        t0,
        t0_wall,
        stop,
        stop_set: false,
        created_ms: None,
        view: DrillView::default(),
        last_phase: String::new(),
        interrupted: false,
        create_error: None,
    };
    let samples = d
        .follow(samples, done, &drill_object(name, &s.gw, p, args))
        .await?;
    d.await_completion().await;
    Ok(Observed {
        samples,
        created_ms: d.created_ms,
        view: d.view,
        interrupted: d.interrupted,
        t0_wall,
        sources,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::args::plan;
    use crate::args::tests::args;
    use crate::figures::ServedBy;

    use crate::cluster::tests::demo_gateway as gw;

    #[test]
    fn drill_object_carries_target_scope_mode_and_guards() {
        let a = args(&[
            "--target",
            "us-east",
            "--target-zone",
            "us-east-a",
            "--mode",
            "kill",
            "--duration",
            "1500ms",
            "--guard-error-percent",
            "5",
            "--guard-p99",
            "1s",
            "--guard-window",
            "2s",
        ]);
        let p = plan(&a).unwrap();
        // What goes on the wire.
        let o = serde_json::to_value(drill_object("d1", &gw(), &p, &a)).unwrap();
        assert_eq!(o["kind"], "FailoverDrill");
        assert_eq!(o["metadata"]["namespace"], "demo");
        assert_eq!(
            o["spec"]["target"],
            serde_json::json!({"region": "us-east", "zone": "us-east-a"})
        );
        // The drill lives in the Gateway's namespace and names it: no ReferenceGrant needed.
        assert_eq!(
            o["spec"]["scope"]["gateways"],
            serde_json::json!([{"namespace": "demo", "name": "web"}])
        );
        assert_eq!(o["spec"]["mode"], "kill");
        assert_eq!(o["spec"]["duration"], "1500ms");
        assert_eq!(o["spec"]["guards"]["maxErrorPercent"], 5);
        assert_eq!(o["spec"]["guards"]["maxP99Latency"], "1s");
        assert_eq!(o["spec"]["guards"]["window"], "2s");
        let a = args(&["--target", "x", "--guard-error-percent", "0.5"]);
        let o = serde_json::to_value(drill_object("d2", &gw(), &plan(&a).unwrap(), &a)).unwrap();
        assert_eq!(o["spec"]["guards"]["maxErrorPercent"], "0.5");
        assert!(o["spec"]["guards"].get("maxP99Latency").is_none());
        let a = args(&["--target", "x"]);
        let o = serde_json::to_value(drill_object("d3", &gw(), &plan(&a).unwrap(), &a)).unwrap();
        assert!(
            o["spec"].get("guards").is_none(),
            "no guards asked, none sent"
        );
    }

    #[test]
    fn status_times_map_onto_the_load_clock() {
        let t0 = Timestamp::from_str("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(
            wall_offset_ms(t0, Some("2025-01-01T00:00:02.500Z")),
            Some(2500.0)
        );
        assert_eq!(wall_offset_ms(t0, Some("garbage")), None);
        assert_eq!(wall_offset_ms(t0, None), None);
    }

    #[test]
    fn live_line_shows_rate_shares_errors_and_phase() {
        let by = |r: &str| ServedBy {
            region: r.into(),
            ..ServedBy::default()
        };
        let w = vec![
            Sample {
                at_us: 0,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-west")),
            },
            Sample {
                at_us: 1,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-west")),
            },
            Sample {
                at_us: 2,
                latency_us: 1,
                outcome: Outcome::Answered(by("us-east")),
            },
            Sample {
                at_us: 3,
                latency_us: 1,
                outcome: Outcome::Failed(FailKind::Connect),
            },
        ];
        let line = live_line(Duration::from_secs(3), &w, "Running");
        assert!(line.contains("4 req/s"), "{line}");
        assert!(line.contains("us-east 33% · us-west 67%"), "{line}");
        assert!(line.contains("errors 1 (1 connect error)"), "{line}");
        assert!(line.ends_with("drill Running"), "{line}");
    }
}
