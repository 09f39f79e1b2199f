//! Leader election against the sandbox's Lease API with short durations: exactly one of two
//! electors leads; a crashed leader is replaced once its lease runs out; a released Lease is
//! taken over at once; a leader cut off from the API steps down before anyone else may lead.
//! A sampler checks throughout that two electors never lead at the same moment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use meridian_controller::leader::{ElectionConfig, Elector, Leadership};
use meridian_sandbox::{Sandbox, SandboxConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_millis(1200);
const RETRY: Duration = Duration::from_millis(100);
/// Scheduling slack on a shared 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn client_for(url: &str) -> Client {
    Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

fn config(identity: &str) -> ElectionConfig {
    let mut cfg = ElectionConfig::new("default", identity);
    cfg.lease_duration = LEASE;
    cfg.renew_deadline = RENEW;
    cfg.retry_period = RETRY;
    cfg
}

/// Samples the electors' states every few milliseconds and remembers whether two ever led at
/// once.
struct Sampler {
    overlap: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl Sampler {
    fn start(states: Vec<watch::Receiver<Leadership>>) -> Self {
        let overlap = Arc::new(AtomicBool::new(false));
        let (stop, mut stop_rx) = watch::channel(false);
        let flag = overlap.clone();
        let task = tokio::spawn(async move {
            let mut samples = 0u64;
            // Bounded by the test's own end (stop), and by a hard cap.
            for _ in 0..200_000 {
                let leaders = states.iter().filter(|s| s.borrow().is_leader()).count();
                if leaders > 1 {
                    flag.store(true, Ordering::SeqCst);
                }
                samples += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = stop_rx.changed() => break,
                }
            }
            samples
        });
        Self {
            overlap,
            stop,
            task,
        }
    }

    async fn finish(self) {
        self.stop.send(true).unwrap();
        let samples = self.task.await.unwrap();
        assert!(samples >= 10, "too few samples: {samples}");
        assert!(
            !self.overlap.load(Ordering::SeqCst),
            "two electors led at the same time"
        );
    }
}

async fn wait_for(
    rx: &mut watch::Receiver<Leadership>,
    within: Duration,
    what: &str,
    ok: impl Fn(&Leadership) -> bool,
) {
    tokio::time::timeout(within, rx.wait_for(|s| ok(s)))
        .await
        .unwrap_or_else(|_| panic!("{what} within {within:?}"))
        .unwrap();
}

/// Which of two electors leads, once exactly one does.
async fn the_leader(a: &Elector, b: &Elector) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (la, lb) = (
            a.leadership().borrow().is_leader(),
            b.leadership().borrow().is_leader(),
        );
        match (la, lb) {
            (true, false) => return 0,
            (false, true) => return 1,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no single leader in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_and_a_crashed_leader_is_replaced_once_its_lease_runs_out() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let client = client_for(&sb.clusters()[0].url);
    let a = Elector::start(client.clone(), config("a")).unwrap();
    let b = Elector::start(client.clone(), config("b")).unwrap();
    let sampler = Sampler::start(vec![a.leadership(), b.leadership()]);
    let mut electors = [Some(a), Some(b)];
    let first = the_leader(electors[0].as_ref().unwrap(), electors[1].as_ref().unwrap()).await;
    let other = 1 - first;
    let leader_id = ["a", "b"][first];
    let mut follower = electors[other].as_ref().unwrap().leadership();
    wait_for(
        &mut follower,
        Duration::from_secs(5),
        "the follower names the holder",
        |s| {
            *s == Leadership::Follower {
                holder: Some(leader_id.to_string()),
            }
        },
    )
    .await;
    // It stays that way while the leader renews (several lease durations).
    tokio::time::sleep(LEASE * 2).await;
    assert!(!follower.borrow().is_leader());

    // Crash: no release. The follower waits for the lease to run out, then leads.
    let crashed = Instant::now();
    drop(electors[first].take());
    wait_for(
        &mut follower,
        LEASE + RETRY + MARGIN,
        "takeover after a crash",
        |s| s.is_leader(),
    )
    .await;
    let took = crashed.elapsed();
    assert!(
        took + RETRY >= LEASE - RETRY,
        "took over after {took:?}, before the crashed leader's lease ran out"
    );
    println!("takeover after a crash: {took:?} (lease {LEASE:?})");
    sampler.finish().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_at_once() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let client = client_for(&sb.clusters()[0].url);
    // A long lease: a takeover well before it runs out can only come from the release.
    let long = |id: &str| ElectionConfig {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(20),
        ..config(id)
    };
    let a = Elector::start(client.clone(), long("a")).unwrap();
    let mut a_state = a.leadership();
    wait_for(
        &mut a_state,
        Duration::from_secs(5),
        "a leads",
        Leadership::is_leader,
    )
    .await;
    let b = Elector::start(client.clone(), long("b")).unwrap();
    let mut b_state = b.leadership();
    let sampler = Sampler::start(vec![a.leadership(), b.leadership()]);
    wait_for(&mut b_state, Duration::from_secs(5), "b follows a", |s| {
        *s == Leadership::Follower {
            holder: Some("a".into()),
        }
    })
    .await;
    let released = Instant::now();
    a.shutdown().await;
    assert!(!a_state.borrow().is_leader(), "stepped down on shutdown");
    wait_for(
        &mut b_state,
        RETRY + MARGIN,
        "b takes a released lease at once",
        Leadership::is_leader,
    )
    .await;
    println!("takeover after a release: {:?}", released.elapsed());
    sampler.finish().await;
    b.shutdown().await;
    sb.shutdown().await;
}

/// A loopback TCP forwarder that can turn into a black hole: connections stay open and
/// silent, as when a network path to the API server is lost.
struct Blackhole {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Blackhole {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while let Ok((mut down, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    held.lock().await.push(down);
                    continue;
                }
                let flag = flag.clone();
                conns.push(tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
                    let cut = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        // Keep the client side open and silent until the test ends.
                        _ = cut => std::future::pending::<()>().await,
                    }
                }));
            }
            for c in conns {
                c.abort();
            }
        });
        Self { addr, cut, task }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_takes_over() {
    let sb = Sandbox::start(SandboxConfig::ephemeral(&["east"]))
        .await
        .unwrap();
    let api = sb.clusters()[0].addr;
    let hole = Blackhole::start(api).await;
    let a = Elector::start(client_for(&format!("http://{}", hole.addr)), config("a")).unwrap();
    let mut a_state = a.leadership();
    wait_for(
        &mut a_state,
        Duration::from_secs(5),
        "a leads",
        Leadership::is_leader,
    )
    .await;
    let b = Elector::start(client_for(&sb.clusters()[0].url), config("b")).unwrap();
    let mut b_state = b.leadership();
    let sampler = Sampler::start(vec![a.leadership(), b.leadership()]);
    wait_for(&mut b_state, Duration::from_secs(5), "b follows", |s| {
        !s.is_leader()
    })
    .await;

    let cut = Instant::now();
    hole.cut.store(true, Ordering::SeqCst);
    wait_for(&mut a_state, RENEW + MARGIN, "a steps down", |s| {
        !s.is_leader()
    })
    .await;
    let stepped_down = cut.elapsed();
    wait_for(
        &mut b_state,
        LEASE + RETRY + MARGIN,
        "b takes over",
        Leadership::is_leader,
    )
    .await;
    let took_over = cut.elapsed();
    assert!(
        stepped_down < took_over,
        "a stepped down after {stepped_down:?}, b led after {took_over:?}"
    );
    assert!(stepped_down <= RENEW + MARGIN, "{stepped_down:?}");
    println!("cut off: a stepped down after {stepped_down:?}, b led after {took_over:?}");
    sampler.finish().await;
    drop(a);
    b.shutdown().await;
    sb.shutdown().await;
}
