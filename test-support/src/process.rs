//! Child processes and files of end-to-end tests: a child stopped on every path ([`Stop`]), its
//! output lines on a channel ([`lines`], [`rest`]), a bounded wait for its exit
//! ([`wait_or_kill`]), whether a tool such as `kubectl` is installed ([`tool_present`]) and a
//! directory of its own ([`ScratchDir`]).
//!
//! These are blocking (std) helpers: the processes they manage outlive no test, and a blocking
//! wait is what a `Drop` can do. Waiting for an exit is event-driven: a scoped thread blocks in
//! `wait()` and reports on a channel that the caller reads with a deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long [`Stop`] lets a child shut down cleanly after SIGINT before it kills it.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// A child process stopped on drop: SIGINT (what Ctrl-C sends; Meridian's commands shut down
/// cleanly on it), then SIGKILL after [`STOP_GRACE`].
pub struct Stop(pub Child);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        signal(&self.0, "INT");
        let _ = wait_or_kill(&mut self.0, STOP_GRACE);
    }
}

/// Sends `signal` (a `kill -<signal>` name) to `child`; a child that is gone already is fine.
fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// How a bounded wait for a child ended.
#[derive(Debug)]
pub struct Exit {
    /// The exit status (`None` if waiting itself failed).
    pub status: Option<ExitStatus>,
    /// Whether it exited on its own within the bound (otherwise it was killed).
    pub in_time: bool,
}

/// Waits for `child` to exit, for at most `within`; past that it is killed (SIGKILL) and reaped.
pub fn wait_or_kill(child: &mut Child, within: Duration) -> Exit {
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        let in_time = rx.recv_timeout(within).is_ok();
        if !in_time {
            // The waiter holds the child; a signal by pid ends its wait().
            let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
        }
        let status = waiter.join().ok().and_then(Result::ok);
        Exit { status, in_time }
    })
}

/// Output lines of a child, echoed to the test's output with `prefix`, on a channel. The
/// channel disconnects when the child's stdout closes (it exited).
///
/// # Panics
/// When the child's stdout was not piped (a test's own mistake).
pub fn lines(child: &mut Child, prefix: &'static str) -> mpsc::Receiver<String> {
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("{prefix}: stdout is not piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{prefix}> {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Every line still to come on `rx` until its sender is gone (the child's stdout closed), for
/// at most `within`: what a child printed just before it exited.
pub fn rest(rx: &mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(line);
    }
    out
}

/// Whether `tool args…` runs and succeeds here (e.g. `kubectl version --client`). Tests that
/// need the tool skip with a message when it is absent.
pub fn tool_present(tool: &str, args: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: `{tool}` is not on PATH; this test needs it");
    }
    found
}

/// A new, empty directory of its own under the system's temp directory, removed (with what is
/// in it) on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `<tmp>/meridian-<tag>-<pid>-<n>`, unique within this process.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meridian-{tag}-{}-{n}", std::process::id()));
        // A leftover of an earlier run with the same pid would mix its files in.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes `text` to `rel` inside the directory (parents created) and returns its path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, rel: impl AsRef<Path>, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `sh -c script` with SIGINT at its default: a non-interactive shell cannot trap a signal
    /// that was ignored when it started, and a test run launched in the background (`cmd &`
    /// without job control) inherits SIGINT ignored, which would make the SIGINT test fail.
    fn sh(script: &str) -> Child {
        Command::new("env")
            .args(["--default-signal=INT", "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_child_that_exits_is_waited_for_and_its_last_lines_arrive() {
        let mut child = sh("echo one; echo two; exit 3");
        let rx = lines(&mut child, "sh");
        let exit = wait_or_kill(&mut child, Duration::from_secs(30));
        assert!(exit.in_time);
        assert_eq!(exit.status.unwrap().code(), Some(3));
        assert_eq!(rest(&rx, Duration::from_secs(30)), ["one", "two"]);
    }

    #[test]
    fn a_child_past_its_bound_is_killed() {
        let mut child = sh("exec sleep 600");
        let started = Instant::now();
        let exit = wait_or_kill(&mut child, Duration::from_millis(200));
        assert!(!exit.in_time);
        assert_eq!(exit.status.unwrap().code(), None, "ended by a signal");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn stop_interrupts_a_running_child() {
        let child = sh("trap 'exit 0' INT; while :; do sleep 0.05; done");
        let pid = child.id();
        let started = Instant::now();
        drop(Stop(child));
        assert!(
            started.elapsed() < STOP_GRACE,
            "stopped by SIGINT, not killed"
        );
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn scratch_dirs_are_unique_and_removed() {
        let (a, b) = (ScratchDir::new("t"), ScratchDir::new("t"));
        assert_ne!(a.path(), b.path());
        let file = a.write("x/y.txt", "hi");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi");
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
        assert!(b.path().is_dir());
    }

    #[test]
    fn a_missing_tool_is_reported_absent() {
        assert!(tool_present("sh", &["-c", "true"]));
        assert!(!tool_present("meridian-no-such-tool", &[]));
    }
}
