//! Loopback ports.

/// A free loopback port: bound, then released. Snapshots and flags that name a port cannot say
/// "any port" (0), so a test picks one first. Another process may take it in between; on a test
/// machine that is rare enough.
///
/// # Panics
/// When no loopback port can be bound at all (a broken test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
