//! What the end-to-end tests share: `meridian up` as a child process that is stopped on every
//! path, and its output lines (the child guard and line reader come from
//! `meridian-test-support`).
#![allow(clippy::unwrap_used, dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use meridian_test_support::process::{Stop, lines};

/// Runs `kubectl --kubeconfig K --cache-dir C --context east ARGS`, feeding `stdin` when given.
pub fn kubectl_east(kubeconfig: &Path, cache: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--context", "east"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    // Closed, so kubectl reading `-f -` sees the end.
    drop(input);
    child.wait_with_output().unwrap()
}

/// Whether kubectl can run here (the e2e tests skip without it).
pub fn have_kubectl() -> bool {
    meridian_test_support::tool_present("kubectl", &["version", "--client"])
}

/// A running `meridian up`.
pub struct Up {
    /// Stops it on drop.
    pub child: Stop,
    /// Its output lines after "Meridian is up".
    pub lines: mpsc::Receiver<String>,
    /// What it printed as the time from start until every Gateway was Programmed.
    pub programmed_after: Option<f64>,
    /// Every line it printed until it was ready.
    pub startup: Vec<String>,
}

/// Starts `meridian up --fresh` with ephemeral ports in `state_dir` (with `extra` arguments and
/// `env` set) and waits up to 120 s for "Meridian is up". Only one `up` can run on a machine at a
/// time: its Gateway and backend loopback addresses are fixed.
pub fn start_up(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "up",
            "--fresh",
            "--base-port",
            "0",
            "--distribution-port",
            "0",
            "--admin-base-port",
            "0",
        ])
        .args(extra)
        .arg("--state-dir")
        .arg(state_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut child, "up");
    let child = Stop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut programmed_after = None;
    let mut startup = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "meridian up did not report readiness within 120 s"
        );
        let line = rx.recv_timeout(Duration::from_secs(1));
        if let Ok(l) = &line {
            startup.push(l.clone());
        }
        match line {
            Ok(line) if line.starts_with("Meridian is up") => break,
            // "programmed: every Gateway Programmed=True in every cluster 3.2 s after start"
            Ok(line) if line.starts_with("programmed:") => {
                programmed_after = line
                    .split_whitespace()
                    .rev()
                    .nth(3)
                    .and_then(|s| s.parse().ok());
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("meridian up exited before it was ready")
            }
        }
    }
    Up {
        child,
        lines: rx,
        programmed_after,
        startup,
    }
}
