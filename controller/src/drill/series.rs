//! The traffic of the drills this controller ran, kept for the live view's pictures.
//!
//! ```text
//! runner: start of a drill ─► DrillSeries::start(key)        (a drill of that name again: anew)
//!         every sample      ─► DrillSeries::record(key, now, cumulative counters of its Gateways)
//! live view: GET /v1/drills/series?cluster=&namespace=&name= ─► DrillSeries::get(key)
//!            (the page turns consecutive points into requests per second by serving region)
//! ```
//!
//! A page opened after a drill has no samples of its own; these let it draw the drill's traffic
//! all the same. Memory is bounded: the last [`MAX_DRILLS`] drills, [`MAX_POINTS`] points each
//! (one a second: the longest drill the default cap allows, and then some). Nothing is persisted:
//! a restarted controller shows the moments of older drills only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_model::traffic::GatewayTraffic;
use serde::Serialize;

use super::DrillKey;

/// Drills whose series are kept (the oldest started goes first).
pub const MAX_DRILLS: usize = 16;
/// Points kept per drill (the first ones go first).
pub const MAX_POINTS: usize = 1_800;

/// One sample of a drill's Gateways: cumulative counters summed over every member cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Requests (failures included).
    pub requests: u64,
    /// Failed requests.
    pub failed: u64,
    /// Requests answered by an endpoint, per region of that endpoint.
    pub by_region: BTreeMap<String, u64>,
}

/// One drill's points, oldest first (locked apart from the list, so a reader copying a long
/// series does not hold up the other drills' runners).
type Points = Arc<Mutex<VecDeque<SeriesPoint>>>;

/// The series of the last drills (shared by the drill runners and the admin listener).
#[derive(Debug, Default)]
pub(crate) struct DrillSeries {
    drills: Mutex<VecDeque<(DrillKey, Points)>>,
}

impl DrillSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(DrillKey, Points)>> {
        self.drills.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A drill starts: its series begins empty (a drill re-created under the same name replaces
    /// the old one's), and the oldest drill's goes when more than [`MAX_DRILLS`] are kept.
    pub(crate) fn start(&self, key: &DrillKey) {
        let mut drills = self.lock();
        drills.retain(|(k, _)| k != key);
        drills.push_back((key.clone(), Arc::default()));
        while drills.len() > MAX_DRILLS {
            drills.pop_front();
        }
    }

    /// Adds a sample to a started drill's series (nothing for a drill not started here).
    pub(crate) fn record(&self, key: &DrillKey, at: SystemTime, total: &GatewayTraffic) {
        let Some(points) = self
            .lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| Arc::clone(p))
        else {
            return;
        };
        let at_ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut points = points.lock().unwrap_or_else(|p| p.into_inner());
        if points.len() >= MAX_POINTS {
            points.pop_front();
        }
        points.push_back(SeriesPoint {
            at_ms,
            requests: total.requests,
            failed: total.failures(),
            by_region: total.by_region.clone(),
        });
    }

    /// The series of one drill, oldest point first; `None` for a drill not among the kept ones.
    pub(crate) fn get(&self, key: &DrillKey) -> Option<Vec<SeriesPoint>> {
        let points = self
            .lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| Arc::clone(p))?;
        let points = points.lock().unwrap_or_else(|p| p.into_inner());
        Some(points.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn key(name: &str) -> DrillKey {
        DrillKey {
            cluster: "east".into(),
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    fn traffic(requests: u64, region: &str) -> GatewayTraffic {
        let mut t = GatewayTraffic::default();
        for _ in 0..requests {
            t.record(Some(region), None, 10);
        }
        t
    }

    #[test]
    fn points_are_kept_per_drill_and_bounded() {
        let s = DrillSeries::default();
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        s.record(&key("never-started"), at, &traffic(1, "r"));
        assert_eq!(s.get(&key("never-started")), None);

        s.start(&key("a"));
        s.record(&key("a"), at, &traffic(3, "us-east"));
        let a = s.get(&key("a")).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].at_ms, 1_000_000);
        assert_eq!(a[0].requests, 3);
        assert_eq!(a[0].by_region.get("us-east"), Some(&3));

        // Past the point bound the first points go.
        for i in 0..MAX_POINTS as u64 + 5 {
            s.record(&key("a"), at + Duration::from_secs(i), &traffic(1, "r"));
        }
        let a = s.get(&key("a")).unwrap();
        assert_eq!(a.len(), MAX_POINTS);
        assert_eq!(a[0].at_ms, 1_000_000 + 5_000);

        // Started again under the same name: a new series.
        s.start(&key("a"));
        assert_eq!(s.get(&key("a")), Some(vec![]));

        // Past the drill bound the oldest started drill goes.
        for i in 0..MAX_DRILLS {
            s.start(&key(&format!("d{i}")));
        }
        assert_eq!(s.get(&key("a")), None);
        assert!(s.get(&key("d0")).is_some());
        assert!(s.get(&key(&format!("d{}", MAX_DRILLS - 1))).is_some());
    }
}
