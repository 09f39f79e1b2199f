//! HTTPS (TLS termination) throughput: Meridian vs nginx vs haproxy, each terminating TLS with
//! the same self-signed ECDSA P-256 certificate (generated at run time with the openssl CLI) in
//! front of the same plain-HTTP echo backend, driven by `wrk` over https with keep-alive (so the
//! figure is record encryption and proxying; handshakes are amortised). Each target's negotiated
//! protocol and cipher is printed, so a difference in cipher cannot hide in the ratio.

use std::process::{Command, Stdio};

use anyhow::Context;

use crate::http::{self, Target};
use crate::stack::{self, Routes, Tls};
use crate::{Env, Opts};

/// `openssl s_client -brief`'s protocol and cipher lines for a TLS port.
fn negotiated(env: &Env, port: u16) -> String {
    let Some(openssl) = &env.openssl else {
        return "?".into();
    };
    let out = Command::new(openssl)
        .args([
            "s_client",
            "-brief",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else { return "?".into() };
    // -brief writes the connection summary to stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    let pick = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    match (pick("Protocol version:"), pick("Ciphersuite:")) {
        (Some(p), Some(c)) => format!("{p} {c}"),
        _ => "?".into(),
    }
}

/// Prints the table; returns nothing because no later figure depends on it.
pub fn run(env: &Env, opts: &Opts) -> anyhow::Result<()> {
    let openssl = env.openssl.as_ref().context(
        "`openssl` is not installed (needed to generate the certificate): \
         install it with `apt-get install -y openssl`",
    )?;
    let tls_dir = env.dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let cert = Tls::generate(openssl, &tls_dir)?;
    let backend = stack::backend(&env.meridian, &env.dir)?;
    let proxies = env.proxies("https", backend.port, Routes::CatchAll, Some(&cert))?;
    let targets: Vec<Target> = proxies.iter().map(Target::of).collect();
    for t in &targets {
        eprintln!("tls: {} negotiates {}", t.name, negotiated(env, t.port));
    }
    let rps = http::throughput(
        &env.wrk,
        opts,
        &targets,
        "HTTPS (TLS termination, keep-alive)",
    )?;
    println!("Negotiated with each target (openssl s_client):");
    println!();
    for (t, r) in targets.iter().zip(&rps) {
        println!("- {}: {} ({r:.0} req/s)", t.name, negotiated(env, t.port));
    }
    println!();
    Ok(())
}
