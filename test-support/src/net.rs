//! Loopback ports.
//!
//! Snapshots and flags that name a port cannot say "any port" (0), so a test picks one first and
//! the code under test binds it later. A port taken from the kernel's ephemeral range (the old way:
//! bind port 0, release) can be handed out again in between as the *source* port of any outgoing
//! connection — a test opening 2 000 client connections next to another test that is about to bind
//! its proxy listener made that collision real (`Address already in use`). So ports come from below
//! the ephemeral range, where the kernel never picks source ports, in a per-process sequence (no
//! two picks of one test binary collide) that starts at a pid-dependent offset (test binaries run
//! one after another, and child processes bind their own ports with 0).

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The lowest port handed out: above the ports of well-known local services.
const LOWEST: u16 = 20_000;

/// A free loopback port: bound, then released, outside the kernel's ephemeral port range when
/// that range leaves room for one (else any port the kernel picks).
///
/// # Panics
/// When no loopback port can be bound at all (a broken test machine).
pub fn free_port() -> u16 {
    if let Some((low, high)) = outside_ephemeral() {
        let span = usize::from(high - low) + 1;
        static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
        let start = std::process::id() as usize * 7_919 % span;
        let _ = NEXT.compare_exchange(usize::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..span {
            let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
            // `offset < span <= u16::MAX - low + 1`, so the sum fits.
            let port = low + u16::try_from(offset).unwrap_or(0);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The widest port range (at least 1 000 ports) between [`LOWEST`] and 65535 that the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`) does not cover.
fn outside_ephemeral() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (parts.next()?.ok()?, parts.next()?.ok()?);
    let below = (lo > LOWEST).then(|| (LOWEST, lo - 1));
    let above = (hi < u16::MAX).then(|| (hi.max(LOWEST - 1) + 1, u16::MAX));
    [below, above]
        .into_iter()
        .flatten()
        .filter(|(a, b)| b >= a && b - a >= 1_000)
        .max_by_key(|(a, b)| b - a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn free_ports_avoid_the_ephemeral_range_and_do_not_repeat() {
        let Some((low, high)) = outside_ephemeral() else {
            return; // no room outside the range on this machine: the fallback is the old way
        };
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for p in &ports {
            assert!((low..=high).contains(p), "{p} outside {low}..={high}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
