//! Liveness-based memory planning: every intermediate tensor and kernel scratch buffer of a
//! run gets an offset in one arena, so that buffers alive at the same step never overlap and
//! buffers whose lifetimes are disjoint share memory.

/// Offsets are multiples of this (a cache line; enough for every vector load).
pub const ALIGN: u64 = 64;

/// A buffer alive from step `start` to step `end`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: usize,
    pub end: usize,
    pub bytes: u64,
}

/// Where each buffer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Offset of each interval, in the order given.
    pub offsets: Vec<u64>,
    /// Bytes of the arena: the planned peak.
    pub size: u64,
    /// The sum of all buffers' sizes (what allocating each one separately would hold if
    /// none were freed).
    pub total: u64,
}

fn aligned(b: u64) -> u64 {
    b.div_ceil(ALIGN).max(1) * ALIGN
}

/// Places buffers greedily, largest first, each at the lowest offset where it overlaps no
/// buffer already placed whose lifetime meets its own. Deterministic.
pub fn plan(items: &[Interval]) -> Plan {
    let mut by_size: Vec<usize> = (0..items.len()).collect();
    by_size.sort_by(|&a, &b| {
        items[b]
            .bytes
            .cmp(&items[a].bytes)
            .then(items[a].start.cmp(&items[b].start))
            .then(a.cmp(&b))
    });
    let mut offsets = vec![0u64; items.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(items.len());
    let mut size = 0;
    for &i in &by_size {
        let it = items[i];
        let need = aligned(it.bytes);
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&j| items[j].start <= it.end && it.start <= items[j].end)
            .map(|&j| (offsets[j], offsets[j] + aligned(items[j].bytes)))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (lo, hi) in busy {
            if lo >= at + need {
                break;
            }
            at = at.max(hi);
        }
        offsets[i] = at;
        size = size.max(at + need);
        placed.push(i);
    }
    Plan {
        offsets,
        size,
        total: items.iter().map(|i| aligned(i.bytes)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(items: &[Interval]) -> Plan {
        let p = plan(items);
        for (i, a) in items.iter().enumerate() {
            let (a0, a1) = (p.offsets[i], p.offsets[i] + aligned(a.bytes));
            assert_eq!(a0 % ALIGN, 0);
            assert!(a1 <= p.size);
            for (j, b) in items.iter().enumerate().skip(i + 1) {
                if a.start <= b.end && b.start <= a.end {
                    let (b0, b1) = (p.offsets[j], p.offsets[j] + aligned(b.bytes));
                    assert!(
                        a1 <= b0 || b1 <= a0,
                        "{a:?} at {a0} and {b:?} at {b0} overlap"
                    );
                }
            }
        }
        // Never more than everything at once, never less than the busiest step.
        assert!(p.size <= p.total);
        let steps = items.iter().map(|i| i.end).max().unwrap_or(0);
        for s in 0..=steps {
            let live: u64 = items
                .iter()
                .filter(|i| i.start <= s && s <= i.end)
                .map(|i| aligned(i.bytes))
                .sum();
            assert!(p.size >= live);
        }
        p
    }

    #[test]
    fn a_chain_reuses_memory() {
        // a -> b -> c -> d, each read only by the next: two buffers at a time.
        let items: Vec<Interval> = (0..4)
            .map(|s| Interval {
                start: s,
                end: s + 1,
                bytes: 1000,
            })
            .collect();
        let p = check(&items);
        assert_eq!(p.size, 2 * aligned(1000));
        assert_eq!(p.total, 4 * aligned(1000));
    }

    #[test]
    fn random_lifetimes_never_overlap() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let n = rnd(30) as usize;
            let items: Vec<Interval> = (0..n)
                .map(|_| {
                    let start = rnd(20) as usize;
                    Interval {
                        start,
                        end: start + rnd(6) as usize,
                        bytes: rnd(5000),
                    }
                })
                .collect();
            check(&items);
        }
    }

    #[test]
    fn empty_buffers_still_get_a_distinct_aligned_slot() {
        let items = [
            Interval {
                start: 0,
                end: 0,
                bytes: 0,
            },
            Interval {
                start: 0,
                end: 0,
                bytes: 0,
            },
        ];
        let p = check(&items);
        assert_ne!(p.offsets[0], p.offsets[1]);
    }
}
