//! What a drill tells the world: its status subresource and Kubernetes Events.
//!
//! ```text
//!  drill task ─► Reporter.status (in memory, whole) ─► write(): merge patch of /status
//!                                                        (deadline per attempt, bounded retries)
//!             ─► event(): events.k8s.io/v1 via kube-runtime's Recorder (controller "meridian")
//! ```
//!
//! The task owns the status: every write sends all of it, so a retried or repeated write is
//! harmless and nothing else needs merging. A failed write is logged and counted; the drill goes
//! on (the next transition writes everything again) — a drill must roll back on time even when
//! an API server is slow.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventReporter};
use kube::{Api, Resource};
use meridian_crds::meridian::{DrillPhase, DrillTimelineEntry, FailoverDrill, FailoverDrillStatus};

use crate::metrics::Metrics;
use crate::writer::FIELD_MANAGER;

/// Reporting controller of drill Events.
pub(crate) const EVENT_CONTROLLER: &str = "meridian";

/// Attempts of one status write before giving up until the next transition.
const WRITE_ATTEMPTS: u32 = 3;

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339_millis(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Sets (or replaces) a condition by type; `lastTransitionTime` moves only when the status
/// changes.
pub(crate) fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = conds
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conds.retain(|c| c.type_ != type_);
    conds.push(Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: transition,
    });
}

/// Writes one drill's status and Events.
pub(crate) struct Reporter {
    api: Api<FailoverDrill>,
    name: String,
    cluster: String,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    recorder: Recorder,
    timeout: Duration,
    metrics: std::sync::Arc<Metrics>,
    /// The status as the task means it; written whole.
    pub status: FailoverDrillStatus,
    pub generation: Option<i64>,
}

impl Reporter {
    pub(crate) fn new(
        client: kube::Client,
        cluster: &str,
        drill: &FailoverDrill,
        timeout: Duration,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let ns = drill.metadata.namespace.clone().unwrap_or_default();
        Self {
            api: Api::namespaced(client.clone(), &ns),
            name: drill.metadata.name.clone().unwrap_or_default(),
            cluster: cluster.to_string(),
            reference: drill.object_ref(&()),
            recorder: Recorder::new(
                client,
                EventReporter {
                    controller: EVENT_CONTROLLER.to_string(),
                    instance: None,
                },
            ),
            timeout,
            metrics,
            status: drill.status.clone().unwrap_or_default(),
            generation: drill.metadata.generation,
        }
    }

    pub(crate) fn phase(&self) -> Option<DrillPhase> {
        self.status.phase
    }

    /// Appends a timeline entry stamped `now`.
    pub(crate) fn timeline(&mut self, type_: &str, message: impl Into<String>, now: Timestamp) {
        self.status.timeline.push(DrillTimelineEntry {
            time: rfc3339_millis(now),
            type_: type_.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
            Timestamp::now(),
        );
    }

    /// Writes the whole status (merge patch of the status subresource). Returns `false` when
    /// the drill is gone.
    pub(crate) async fn write(&mut self) -> bool {
        self.status.observed_generation = self.generation;
        let body = serde_json::json!({ "status": &self.status });
        let patch = Patch::Merge(&body);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let counter = |result: &str| {
            self.metrics
                .status_writes
                .with_label_values(&[&self.cluster, "FailoverDrill", result])
                .inc();
        };
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=WRITE_ATTEMPTS {
            let write = self.api.patch_status(&self.name, &params, &patch);
            match tokio::time::timeout(self.timeout, write).await {
                Ok(Ok(_)) => {
                    counter("ok");
                    return true;
                }
                Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {
                    counter("gone");
                    return false;
                }
                Ok(Err(e)) => {
                    counter("error");
                    tracing::warn!(cluster = %self.cluster, drill = %self.name, attempt, error = %e, "drill status write failed");
                }
                Err(_) => {
                    counter("timeout");
                    tracing::warn!(cluster = %self.cluster, drill = %self.name, attempt, timeout = ?self.timeout, "drill status write timed out");
                }
            }
            if attempt < WRITE_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        true
    }

    /// Emits an Event about the drill (best effort, bounded by the write deadline).
    pub(crate) async fn event(&self, warning: bool, reason: &str, note: &str) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            // The Events API caps the note at 1 kB.
            note: Some(truncate(note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        match tokio::time::timeout(self.timeout, self.recorder.publish(&ev, &self.reference)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(cluster = %self.cluster, drill = %self.name, reason, error = %e, "drill event not recorded")
            }
            Err(_) => {
                tracing::warn!(cluster = %self.cluster, drill = %self.name, reason, "drill event timed out")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_have_milliseconds() {
        let t: Timestamp = "2026-03-01T10:20:30.123456Z".parse().unwrap();
        assert_eq!(rfc3339_millis(t), "2026-03-01T10:20:30.123Z");
        let t: Timestamp = "2026-03-01T10:20:30Z".parse().unwrap();
        assert_eq!(rfc3339_millis(t), "2026-03-01T10:20:30.000Z");
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let t1: Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        let t2: Timestamp = "2026-03-01T11:00:00Z".parse().unwrap();
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            "Accepted",
            false,
            "Conflicted",
            "wait",
            Some(1),
            t1,
        );
        set_condition(
            &mut conds,
            "Accepted",
            false,
            "Conflicted",
            "wait more",
            Some(1),
            t2,
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(t1));
        assert_eq!(conds[0].message, "wait more");
        set_condition(&mut conds, "Accepted", true, "Accepted", "", Some(2), t2);
        assert_eq!(conds[0].last_transition_time, Time(t2));
        assert_eq!(conds[0].observed_generation, Some(2));
        set_condition(&mut conds, "Complete", false, "Running", "", Some(2), t2);
        assert_eq!(conds.len(), 2);
    }

    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
