//! Consistent hashing of requests to endpoints, for clusters with `lb_policy: RING_HASH` or
//! `MAGLEV` (Istio's `consistentHash`): the request hash from the route's `hash_policy` picks the
//! first ring point at or after it. Each endpoint owns points in proportion to its weight, so a
//! user stays on one endpoint, and adding or removing an endpoint moves only the users of the
//! points it gains or loses. The ring is built when endpoints change; a pick is a binary search
//! (no allocation). Envoy's ring uses another hash function, so the endpoint a given user lands
//! on differs from Envoy's; stickiness and proportions are what match.

use std::hash::{Hash, Hasher};

/// Points per unit of weight (the smallest non-zero weight is one unit). A fixed count per
/// endpoint, rather than a share of a fixed ring, is what keeps the other endpoints' points in
/// place when one is added or removed.
const POINTS_PER_UNIT: u64 = 160;
/// Upper bound of the ring's size; weights far apart are scaled down to fit.
const MAX_POINTS: u64 = 1 << 16;

/// A hash ring over the endpoints of one priority level.
#[derive(Debug, Clone, Default)]
pub struct HashRing {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

fn point(key: &str, i: u64) -> u64 {
    // SipHash with fixed zero keys: the same ring in every process and after every restart.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    i.hash(&mut h);
    h.finish()
}

impl HashRing {
    /// Build a ring from `(key, weight)` per endpoint (index order); weight 0 gets no points.
    /// `None` when no endpoint has weight.
    pub fn new<'a>(endpoints: impl Iterator<Item = (&'a str, u64)>) -> Option<HashRing> {
        let list: Vec<(&str, u64)> = endpoints.collect();
        let unit = list.iter().map(|(_, w)| *w).filter(|w| *w > 0).min()?;
        let units: u64 = list.iter().map(|(_, w)| w.div_ceil(unit)).sum();
        let per_unit = (MAX_POINTS / units.max(1)).clamp(1, POINTS_PER_UNIT);
        let mut points = Vec::new();
        for (idx, (key, w)) in list.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let n = (per_unit * w / unit).max(1);
            for i in 0..n {
                points.push((point(key, i), idx as u32));
            }
        }
        points.sort_unstable();
        Some(HashRing { points })
    }

    /// The endpoint index for a request hash.
    pub fn pick(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        let (_, idx) = self
            .points
            .get(i)
            .or(self.points.first())
            .copied()
            .unwrap_or((0, 0));
        idx as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_and_proportional() {
        let ring = HashRing::new([("a:1", 1), ("b:1", 3)].into_iter()).unwrap();
        let mut counts = [0u32; 2];
        for h in 0..20_000u64 {
            let hash = point("user", h);
            let idx = ring.pick(hash);
            assert_eq!(ring.pick(hash), idx, "same hash, same endpoint");
            counts[idx] += 1;
        }
        // 1:3 by weight; with 160 points per unit the share is within a few percent.
        let share = counts[1] as f64 / 20_000.0;
        assert!((0.70..0.80).contains(&share), "{counts:?}");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_users() {
        let three = HashRing::new([("a", 1), ("b", 1), ("c", 1)].into_iter()).unwrap();
        let two = HashRing::new([("a", 1), ("b", 1), ("c", 0)].into_iter()).unwrap();
        for h in 0..5_000u64 {
            let hash = point("u", h);
            let before = three.pick(hash);
            if before != 2 {
                assert_eq!(two.pick(hash), before, "a user of a or b stays");
            }
        }
        assert!(HashRing::new([("a", 0)].into_iter()).is_none());
    }
}
