//! Proxy memory: resident memory at 10 / 1k / 10k routes, and per idle keep-alive connection.
//!
//! Routes: each proxy is started with `n` host routes (one rule and one backend each, see
//! [`Routes::Hosts`]), warmed with requests spread over all routes on one keep-alive connection,
//! then its memory is read from `/proc`: RSS of the serving process (nginx: the worker) and PSS
//! summed over the process tree (nginx's master and worker share their configuration
//! copy-on-write; PSS counts each page once). Cost per route = (RSS at n − RSS at the smallest
//! n) / (n − smallest n).
//!
//! Idle connections: with the smallest route table, `idle` connections are opened, each sends one
//! request and then stays open; after a second the serving process's RSS growth / `idle` is the
//! cost per idle connection. Each connection then sends a second request, so a proxy that quietly
//! closed them cannot look cheap.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::stack::{self, Proxy, Routes, host};
use crate::sys::{http_get, loopback, pss_tree_kib, rss_kib};
use crate::{Env, Opts};

const WARM_REQUESTS: usize = 2_000;

fn warm(p: &Proxy, n: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(loopback(p.port))?;
    for k in 0..WARM_REQUESTS {
        // nginx closes a keep-alive connection after 1000 requests (`keepalive_requests`).
        if k % 500 == 0 {
            s = TcpStream::connect(loopback(p.port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
        }
        let code = http_get(&mut s, &host((k * 7919) % n))?;
        if code != 200 {
            bail!("{} answered {code} for route {}", p.name, (k * 7919) % n);
        }
    }
    Ok(())
}

struct Idle {
    before_kib: u64,
    after_kib: u64,
    alive: usize,
}

fn idle(p: &Proxy, count: usize) -> anyhow::Result<Idle> {
    let pid = p.serving_pid();
    let before_kib = rss_kib(pid).context("reading RSS")?;
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = TcpStream::connect(loopback(p.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        http_get(&mut s, &host(0))?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after_kib = rss_kib(pid).context("reading RSS")?;
    let mut alive = 0;
    for s in &mut conns {
        if matches!(http_get(s, &host(0)), Ok(200)) {
            alive += 1;
        }
    }
    Ok(Idle {
        before_kib,
        after_kib,
        alive,
    })
}

/// One proxy at one route-table size, after warm-up.
struct Row {
    name: String,
    routes: usize,
    rss_kib: u64,
    pss_kib: u64,
}

/// Prints both tables.
pub fn run(env: &Env, opts: &Opts) -> anyhow::Result<()> {
    let sizes = sizes(opts)?;
    let smallest = sizes[0];
    let backend = stack::backend(&env.meridian, &env.dir)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut idle_rows: Vec<(String, Idle)> = Vec::new();
    for (kind, name, bin) in env.proxy_kinds() {
        for &n in &sizes {
            let dir = env.dir.join(format!("mem-{n}"));
            let p = stack::start(
                kind,
                &name,
                &bin,
                &dir,
                backend.port,
                Routes::Hosts(n),
                None,
            )?;
            rows.push(measure(&p, n)?);
            if n == smallest && opts.idle > 0 {
                let r = idle(&p, opts.idle)?;
                eprintln!(
                    "memory: {name:<12} {} idle connections: RSS {} → {} KiB, {} still served",
                    opts.idle, r.before_kib, r.after_kib, r.alive
                );
                idle_rows.push((name.clone(), r));
            }
        }
    }
    print_routes_table(&rows, smallest);
    if !idle_rows.is_empty() {
        print_idle_table(&idle_rows, opts.idle, smallest);
    }
    Ok(())
}

/// `--routes`, sorted, without repeats; at least one size, none zero.
fn sizes(opts: &Opts) -> anyhow::Result<Vec<usize>> {
    let mut sizes = opts.routes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    match sizes.first() {
        None => bail!("--routes needs at least one size"),
        Some(0) => bail!("--routes sizes must be at least 1"),
        Some(_) => Ok(sizes),
    }
}

/// Warms a proxy started with `n` routes, lets it settle, and reads its memory.
fn measure(p: &Proxy, n: usize) -> anyhow::Result<Row> {
    warm(p, n)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(p.serving_pid()).context("reading RSS")?;
    let pss = pss_tree_kib(p.pid).context("reading PSS")?;
    eprintln!(
        "memory: {:<12} {n:>6} routes: RSS {} KiB, PSS(tree) {} KiB",
        p.name, rss, pss
    );
    Ok(Row {
        name: p.name.clone(),
        routes: n,
        rss_kib: rss,
        pss_kib: pss,
    })
}

fn print_routes_table(rows: &[Row], smallest: usize) {
    println!("## Proxy memory by route count (one rule + one backend per route; after warm-up)");
    println!();
    println!(
        "| proxy | routes | RSS MiB (serving process) | PSS MiB (process tree) | \
         KiB per route (RSS, vs {smallest} routes) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let (name, n, rss) = (&row.name, row.routes, row.rss_kib);
        let base = rows
            .iter()
            .find(|r| &r.name == name && r.routes == smallest)
            .map_or(rss, |r| r.rss_kib);
        let per = if n > smallest {
            format!("{:.1}", (rss as f64 - base as f64) / (n - smallest) as f64)
        } else {
            "–".into()
        };
        println!(
            "| {name} | {n} | {:.1} | {:.1} | {per} |",
            rss as f64 / 1024.0,
            row.pss_kib as f64 / 1024.0
        );
    }
    println!();
}

fn print_idle_table(idle_rows: &[(String, Idle)], idle: usize, smallest: usize) {
    println!(
        "## Proxy memory per idle keep-alive connection ({idle} connections, one request each, \
         {smallest} routes)"
    );
    println!();
    println!(
        "| proxy | RSS before MiB | RSS with idle connections MiB | KiB per connection | \
         connections still served |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in idle_rows {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} / {idle} |",
            r.before_kib as f64 / 1024.0,
            r.after_kib as f64 / 1024.0,
            (r.after_kib as f64 - r.before_kib as f64) / idle as f64,
            r.alive,
        );
    }
    println!();
}
