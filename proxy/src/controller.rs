//! `--controller` mode: the proxy as the [`Target`] of a distribution [`Client`].
//!
//! Each snapshot from the controller goes through [`ProxyHandle::apply`] exactly like a file
//! snapshot; its result becomes the acknowledgement. A refusal because a socket could not be
//! bound is retried every few seconds (the port may be freed), and only a change is reported
//! again. An endpoint-only delta takes [`ProxyHandle::apply_endpoints`] (no recompile of the
//! whole router) when the proxy serves its base. The connection status lands on `/ready` (`controller`) and in
//! `meridian_proxy_controller_connected`; the served snapshot never depends on it. The client
//! reports the per-Gateway traffic counters ([`ProxyHandle::traffic`]) back to the controller.

use std::convert::Infallible;

use meridian_distribution::{
    Client, ClientStatus, EndpointChange, GatewayTrafficReport, Refused, Target,
};
use meridian_model::{Snapshot, SnapshotError};

use crate::handle::{ApplyError, ProxyHandle};
use crate::state::ControllerLink;

fn refused(e: ApplyError) -> Refused {
    Refused {
        retry_after: matches!(e, ApplyError::Bind { .. }).then_some(crate::BIND_RETRY),
        reason: e.to_string(),
    }
}

impl Target for ProxyHandle {
    async fn apply(&self, snapshot: Snapshot) -> Result<u64, Refused> {
        ProxyHandle::apply(self, snapshot).await.map_err(refused)
    }

    async fn apply_endpoints(
        &self,
        generation: u64,
        base: u64,
        changes: &[EndpointChange],
    ) -> Option<Result<u64, Refused>> {
        ProxyHandle::apply_endpoints(self, generation, base, changes)
            .await
            .map(|r| r.map_err(refused))
    }

    fn refuse(&self, reason: &str) {
        ProxyHandle::refuse(
            self,
            ApplyError::Invalid(SnapshotError::Decode(reason.to_string())),
        );
    }

    fn status(&self, status: &ClientStatus) {
        let url = self
            .shared()
            .controller()
            .map(|l| l.url)
            .unwrap_or_default();
        self.shared().set_controller(Some(ControllerLink {
            url,
            connected: status.connected,
            last_error: status.last_error.clone(),
        }));
    }

    fn traffic(&self) -> Vec<GatewayTrafficReport> {
        ProxyHandle::traffic(self)
    }
}

/// Follows the controller behind `client` forever, programming `handle` with what it sends.
pub async fn follow_controller(handle: &ProxyHandle, client: &Client) -> Infallible {
    handle.shared().set_controller(Some(ControllerLink {
        url: client.url().to_string(),
        connected: false,
        last_error: None,
    }));
    client.run(handle).await
}
