//! Weighted choice among clusters (or endpoints) by cumulative intervals.
//!
//! Entries with weight 0 own an empty interval and are never chosen. A pick takes either the
//! request's random value (Envoy's `value % total_weight`) or a request hash. Hashes are mapped to a point of [0, 1) *before* scaling by the total
//! weight, so a key keeps its point when weights change: moving weight from one entry to the entry
//! after it (stable first, canary second, as routes list them) only ever moves keys toward the
//! entry that gained weight, never back.

/// Cumulative weights over a list of entries.
#[derive(Debug, Clone)]
pub struct WeightedPick {
    /// `ends[i]` = sum of weights of entries `0..=i`.
    ends: Vec<u64>,
    total: u64,
    /// The entries with weight, when weights differ (a uniform pick then needs them).
    uniform: Option<Box<[usize]>>,
}

impl WeightedPick {
    /// Build from weights. Returns `None` when every weight is 0.
    pub fn new(weights: impl IntoIterator<Item = u64>) -> Option<Self> {
        let mut ends = Vec::new();
        let mut total = 0u64;
        let mut positive = Vec::new();
        let mut first = None;
        let mut equal = true;
        for (i, w) in weights.into_iter().enumerate() {
            total = total.saturating_add(w);
            ends.push(total);
            if w > 0 {
                positive.push(i);
                equal &= *first.get_or_insert(w) == w;
            }
        }
        let uniform = (!equal).then(|| positive.into_boxed_slice());
        (total > 0).then_some(WeightedPick {
            ends,
            total,
            uniform,
        })
    }

    /// Sum of weights.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The entry owning position `pos` (0 <= pos < total).
    fn at(&self, pos: u64) -> usize {
        // First entry whose end is > pos; weight-0 entries have end == previous end and are skipped.
        self.ends.partition_point(|&end| end <= pos)
    }

    /// Pick with the request's random value, as Envoy does: `value % total` selects the interval.
    /// Envoy derives the value from `x-request-id`, so the same id gives the same cluster in both.
    pub fn pick_random(&self, random: u64) -> usize {
        self.at(random % self.total)
    }

    /// Pick one of the entries with weight, each as likely as the others (Envoy's RANDOM load
    /// balancer ignores endpoint weights).
    pub fn pick_uniform(&self, random: u64) -> usize {
        match &self.uniform {
            None => self.pick_random(random),
            Some(entries) => entries[(random % entries.len() as u64) as usize],
        }
    }

    /// Pick with a 64-bit request hash (sticky: the same hash always gives the same entry). The
    /// hash is a point of [0, 1) scaled to [0, total), so it keeps its place when weights change.
    pub fn pick_hash(&self, hash: u64) -> usize {
        let pos = ((hash as u128 * self.total as u128) >> 64) as u64;
        self.at(pos)
    }
}

/// Whether a request falls in a fraction (`numerator`, `denominator`: a runtime fraction's
/// default value) for its `random` value, as Envoy draws it: `random % denominator < numerator`.
pub fn fraction_drawn((num, den): (u64, u64), random: u64) -> bool {
    den > 0 && random % den < num
}

/// A fast per-thread pseudo-random generator (SplitMix64) for per-request choices.
pub fn fast_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_weights() {
        let p = WeightedPick::new([80, 20]).unwrap();
        assert_eq!(p.total(), 100);
        assert_eq!(p.at(0), 0);
        assert_eq!(p.at(79), 0);
        assert_eq!(p.at(80), 1);
        assert_eq!(p.at(99), 1);
        assert_eq!(p.pick_random(0), 0);
        assert_eq!(p.pick_random(179), 0);
        assert_eq!(p.pick_random(180), 1);
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let p = WeightedPick::new([0, 5, 0, 5, 0]).unwrap();
        let mut seen = [0u32; 5];
        for i in 0..10_000u64 {
            seen[p.pick_random(i)] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0);
        assert!(seen[1] > 4000 && seen[3] > 4000, "{seen:?}");
        assert!(WeightedPick::new([0, 0]).is_none());
    }

    #[test]
    fn split_with_fixed_seed_is_exact_over_a_grid() {
        // Consecutive values hit each interval in exact proportion.
        let p = WeightedPick::new([80, 20]).unwrap();
        let canary = (0..100_000u64).filter(|i| p.pick_random(*i) == 1).count();
        assert_eq!(canary, 20_000);
        // Hash picks too, with evenly spaced hashes.
        let step = u64::MAX / 100_000 + 1;
        let canary = (0..100_000u64)
            .filter(|i| p.pick_hash(i * step) == 1)
            .count();
        assert_eq!(canary, 20_000);
    }

    #[test]
    fn hash_is_sticky_and_monotone_when_weight_moves_to_canary() {
        let keys: Vec<u64> = (0..5_000u64)
            .map(|i| i.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17))
            .collect();
        let mut previous: Option<Vec<usize>> = None;
        for canary in [0u64, 1, 5, 10, 20, 33, 50, 80, 99, 100] {
            // Totals change too (relative weights), which must not break monotonicity.
            let p = WeightedPick::new([(100 - canary) * 3, canary * 3]).unwrap();
            let now: Vec<usize> = keys.iter().map(|k| p.pick_hash(*k)).collect();
            let again: Vec<usize> = keys.iter().map(|k| p.pick_hash(*k)).collect();
            assert_eq!(now, again, "sticky");
            if let Some(prev) = &previous {
                for (a, b) in prev.iter().zip(&now) {
                    assert!(
                        !(*a == 1 && *b == 0),
                        "a key moved from canary back to stable"
                    );
                }
            }
            previous = Some(now);
        }
    }

    #[test]
    fn fast_random_varies() {
        let a = fast_random();
        let b = fast_random();
        assert_ne!(a, b);
    }

    #[test]
    fn a_uniform_pick_ignores_weights_but_not_zero_weights() {
        let p = WeightedPick::new([3, 0, 1]).unwrap();
        let mut counts = [0u32; 3];
        for r in 0..1000 {
            counts[p.pick_uniform(r)] += 1;
        }
        assert_eq!(counts, [500, 0, 500]);
        let equal = WeightedPick::new([2, 2]).unwrap();
        assert_eq!((equal.pick_uniform(0), equal.pick_uniform(3)), (0, 1));
    }
}
