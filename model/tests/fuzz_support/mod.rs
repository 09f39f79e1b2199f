//! The harness every property-based fuzz target (`tests/fuzz_*.rs`) shares.
//!
//! Each target is a fixed number of generated cases from a fixed seed, so `cargo test` replays the
//! same inputs on every machine; the target's `*.proptest-regressions` file (committed next to it)
//! holds the seeds of failures found before and runs first. `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override the case count and the seed for a longer or a different run
//! (docs/fuzzing.md). Each target prints one summary line (`-- --nocapture` shows it):
//! `fuzz <target>: <executions> executions (<cases> cases, seed <seed>) in <ms> ms`.
//!
//! Coverage-guided fuzzing (cargo-fuzz, libFuzzer) needs a nightly toolchain; this workspace is
//! pinned to stable, so these targets are property-based only.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

/// Runs `test` on `cases` values of `strategy` (unless `PROPTEST_CASES` says otherwise) from a
/// fixed seed, replaying the seeds saved in `regressions` first; panics with the smallest failing
/// input found. `regressions` is relative to the crate directory, where cargo runs tests.
pub fn run<S: Strategy>(
    target: &str,
    cases: u32,
    regressions: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let defaults = Config::default();
    let config = Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            defaults.rng_seed
        } else {
            RngSeed::Fixed(seed_of(target))
        },
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..defaults
    };
    let (cases, seed) = (config.cases, config.rng_seed);
    let executions = AtomicU64::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    let executions = executions.load(Ordering::Relaxed);
    println!(
        "fuzz {target}: {executions} executions ({cases} cases, seed {seed}) in {} ms",
        started.elapsed().as_millis()
    );
    match result {
        Ok(()) => executions,
        Err(TestError::Fail(why, value)) => {
            panic!("fuzz {target} failed: {why}\nminimal input: {value:#?}")
        }
        Err(TestError::Abort(why)) => panic!("fuzz {target} aborted: {why}"),
    }
}

/// A stable per-target seed (FNV-1a of the name), so targets do not share one input stream.
fn seed_of(target: &str) -> u64 {
    target.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The files of `tests/corpus/<dir>`, sorted by name, with their contents.
pub fn corpus(dir: &str) -> Vec<(String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<(String, String)> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", path.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", path.display());
    files
}

/// Prints the corpus summary line of a target.
pub fn corpus_summary(target: &str, files: usize, bytes: usize) {
    println!("fuzz {target}: corpus replayed, {files} files, {bytes} bytes");
}
