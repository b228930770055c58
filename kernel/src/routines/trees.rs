//! Tree ensembles: every row walks every tree once, node by node, to its leaf — the semantics
//! of the `tree_walk` op written once ([`walk`]), shared by the interpreter and the host
//! routine `kiln_tree_walk`, which runs it over f32 rows, parallel over rows.

use std::sync::atomic::{AtomicI64, Ordering};

/// The rule code of a leaf (the walk stops there).
pub const LEAF: i64 = 6;

/// One node of a forest's tables.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub feature: i64,
    pub threshold: f64,
    pub rule: i64,
    pub yes: i64,
    pub no: i64,
    pub nan_yes: bool,
}

/// Why a walk failed (the tables, not the row, are at fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A node names a feature the rows do not have.
    Feature(i64),
    /// A node index outside the tables (a root or a child).
    Node(i64),
    /// A rule code outside 0..=6.
    Rule(i64),
    /// No leaf within as many steps as there are nodes: the tree has a cycle.
    Cycle,
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Feature(i) => write!(f, "a node reads feature {i}, which rows do not have"),
            WalkError::Node(i) => write!(f, "node index {i} is outside the forest"),
            WalkError::Rule(r) => write!(f, "rule code {r} is not one of 0..=6"),
            WalkError::Cycle => write!(f, "a tree has a cycle (no leaf within its node count)"),
        }
    }
}

/// Whether value `x` takes the yes branch of a node with `rule` and threshold `t`.
#[inline]
fn yes(rule: i64, x: f64, t: f64, nan_yes: bool) -> Result<bool, WalkError> {
    if nan_yes && x.is_nan() {
        return Ok(true);
    }
    Ok(match rule {
        0 => x <= t,
        1 => x < t,
        2 => x >= t,
        3 => x > t,
        4 => x == t,
        5 => x != t,
        r => return Err(WalkError::Rule(r)),
    })
}

/// The leaf a row reaches from `root` in a forest of `nodes` nodes: `feature(i)` is the row's
/// feature `i` (`None` when it has none), `node(i)` the tables at node `i` (`i < nodes`).
#[inline]
pub fn walk(
    root: i64,
    nodes: usize,
    feature: impl Fn(i64) -> Option<f64>,
    node: impl Fn(usize) -> Node,
) -> Result<i64, WalkError> {
    let at = |i: i64| {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < nodes)
            .ok_or(WalkError::Node(i))
    };
    let mut cur = at(root)?;
    for _ in 0..=nodes {
        let n = node(cur);
        if n.rule == LEAF {
            return Ok(cur as i64);
        }
        let x = feature(n.feature).ok_or(WalkError::Feature(n.feature))?;
        let next = match yes(n.rule, x, n.threshold, n.nan_yes)? {
            true => n.yes,
            false => n.no,
        };
        cur = at(next)?;
    }
    Err(WalkError::Cycle)
}

/// [`walk`] for `L` rows at once over tables already checked (every index in range, every
/// rule valid), in lockstep: each step moves every row that is not at a leaf yet, without a
/// branch on where it goes (a leaf stays where it is), so the rows' chains of dependent loads
/// overlap and no comparison's outcome is mispredicted. `None` only for a cycle (no leaf
/// within `nodes` steps), which the checked walk then reports. Rows have at least one feature;
/// every inner node has rule `RULE` unless it is -1.
#[allow(clippy::too_many_arguments)]
#[inline]
fn fast_walk<const L: usize, const RULE: i64>(
    root: i64,
    nodes: usize,
    rows: [&[f32]; L],
    feature: &[i64],
    threshold: &[f32],
    rule: &[i64],
    yes: &[i64],
    no: &[i64],
    nan_yes: &[u8],
) -> Option<[i64; L]> {
    let mut cur = [root as usize; L];
    for _ in 0..=nodes {
        let mut moving = 0usize;
        for (c, row) in cur.iter_mut().zip(rows) {
            // SAFETY (of every unchecked access): the caller checked that roots, children and
            // the features of inner nodes are in range for their tables and the rows (a
            // leaf reads feature 0, which every row has).
            let r = unsafe { *rule.get_unchecked(*c) };
            let leaf = r == LEAF;
            let f = if leaf {
                0
            } else {
                unsafe { *feature.get_unchecked(*c) as usize }
            };
            let x = unsafe { *row.get_unchecked(f) };
            let t = unsafe { *threshold.get_unchecked(*c) };
            // The rule every inner node has, when they share one (`RULE` 0..=5), else each
            // node's; NaNs take the yes branch only where `nan_yes` says so.
            let r = if RULE >= 0 { RULE } else { r };
            let go = (x.is_nan() & (unsafe { *nan_yes.get_unchecked(*c) } != 0))
                | match r {
                    0 => x <= t,
                    1 => x < t,
                    2 => x >= t,
                    3 => x > t,
                    4 => x == t,
                    _ => x != t,
                };
            let (y, n) = unsafe { (*yes.get_unchecked(*c), *no.get_unchecked(*c)) };
            let next = if go { y } else { n } as usize;
            *c = if leaf { *c } else { next };
            moving += usize::from(!leaf);
        }
        if moving == 0 {
            return Some(cur.map(|c| c as i64));
        }
    }
    None
}

/// `out[r·trees + t]` = the leaf row `r` of `x` [rows, features] reaches in tree `t` (from
/// `roots[t]`), for a forest of `nodes` nodes given as tables (see the `tree_walk` op): 0, or
/// 1 when the tables are malformed (an index out of range, a bad rule, a cycle). Parallel over
/// rows.
///
/// # Safety
/// `x` readable for `rows·features` elements, every table for `nodes`, `roots` for `trees`,
/// `out` writable for `rows·trees`.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_tree_walk(
    x: *const f32,
    feature: *const i64,
    threshold: *const f32,
    rule: *const i64,
    yes: *const i64,
    no: *const i64,
    nan_yes: *const u8,
    roots: *const i64,
    out: *mut i64,
    rows: i64,
    features: i64,
    trees: i64,
    nodes: i64,
) -> i64 {
    let (rows, features, trees, nodes) = (
        rows.max(0) as usize,
        features.max(0) as usize,
        trees.max(0) as usize,
        nodes.max(0) as usize,
    );
    // SAFETY: the caller's contract, per slice.
    let (feature, threshold, rule, yes, no, nan_yes, roots) = unsafe {
        (
            std::slice::from_raw_parts(feature, nodes),
            std::slice::from_raw_parts(threshold, nodes),
            std::slice::from_raw_parts(rule, nodes),
            std::slice::from_raw_parts(yes, nodes),
            std::slice::from_raw_parts(no, nodes),
            std::slice::from_raw_parts(nan_yes, nodes),
            std::slice::from_raw_parts(roots, trees),
        )
    };
    let node = |i: usize| Node {
        feature: feature[i],
        threshold: f64::from(threshold[i]),
        rule: rule[i],
        yes: yes[i],
        no: no[i],
        nan_yes: nan_yes[i] != 0,
    };
    // Tables whose every node is well formed (as nearly all are) take the fast walk, which
    // checks nothing per step; others take `walk`, which fails only where a row goes.
    // One pass without branches (vectorized; the tables can be large): whether every inner
    // node is well formed, and the rule they share if they do (-1 otherwise).
    let (mut bad, mut lo, mut hi) = (false, i64::MAX, i64::MIN);
    let below = |v: i64, n: usize| (v as u64) < n as u64;
    for i in 0..nodes {
        let r = rule[i];
        let leaf = r == LEAF;
        let ok = below(r, 6) & below(feature[i], features) & below(yes[i], nodes);
        bad |= !(leaf | (ok & below(no[i], nodes)));
        lo = lo.min(if leaf { i64::MAX } else { r });
        hi = hi.max(if leaf { i64::MIN } else { r });
    }
    let sound = !bad && roots.iter().all(|&r| below(r, nodes));
    let uniform = if lo == hi { lo } else { -1 };
    let failed = AtomicI64::new(0);
    let (x, out) = (x as usize, out as usize);
    // Blocks of rows (at least 16 each) over this thread and its helpers.
    let parts = (crate::threads::helpers() + 1).min(rows / 16).max(1);
    crate::threads::parallel_for(parts, |p| {
        let (lo, hi) = (rows * p / parts, rows * (p + 1) / parts);
        // Tree by tree, so that one tree's nodes stay in cache while every row walks it.
        for (t, &root) in roots.iter().enumerate() {
            // SAFETY: row `r` of `x` and element (r, t) of `out` are in bounds; parts write
            // disjoint rows.
            let row = |r: usize| unsafe {
                std::slice::from_raw_parts((x as *const f32).add(r * features), features)
            };
            let put = |r: usize, leaf: i64| unsafe { *(out as *mut i64).add(r * trees + t) = leaf };
            let mut r = lo;
            if sound && features > 0 {
                // Eight rows at a time, then one.
                let t = (feature, threshold, rule, yes, no, nan_yes);
                while r + 8 <= hi {
                    let rows: [&[f32]; 8] = std::array::from_fn(|i| row(r + i));
                    let walked = match uniform {
                        0 => fast_walk::<8, 0>(root, nodes, rows, t.0, t.1, t.2, t.3, t.4, t.5),
                        1 => fast_walk::<8, 1>(root, nodes, rows, t.0, t.1, t.2, t.3, t.4, t.5),
                        _ => fast_walk::<8, -1>(root, nodes, rows, t.0, t.1, t.2, t.3, t.4, t.5),
                    };
                    let Some(leaves) = walked else {
                        break;
                    };
                    for (i, leaf) in leaves.into_iter().enumerate() {
                        put(r + i, leaf);
                    }
                    r += 8;
                }
                while r < hi {
                    let rows = [row(r)];
                    let walked =
                        fast_walk::<1, -1>(root, nodes, rows, t.0, t.1, t.2, t.3, t.4, t.5);
                    let Some([leaf]) = walked else {
                        break;
                    };
                    put(r, leaf);
                    r += 1;
                }
            }
            for r in r..hi {
                let row = row(r);
                let feature = |i: i64| {
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| row.get(i))
                        .map(|&v| f64::from(v))
                };
                match walk(root, nodes, feature, node) {
                    Ok(leaf) => put(r, leaf),
                    Err(_) => {
                        failed.store(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    });
    failed.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// feature, threshold, rule, yes, no, nan_yes.
    type Tables = (Vec<i64>, Vec<f32>, Vec<i64>, Vec<i64>, Vec<i64>, Vec<u8>);

    /// x0 ≤ 0.5 ? (x1 < 2 ? leaf 3 : leaf 4) : leaf 2, with NaN in x0 going to yes.
    fn tables() -> Tables {
        (
            vec![0, 1, 0, 0, 0],
            vec![0.5, 2.0, 0.0, 0.0, 0.0],
            vec![0, 1, LEAF, LEAF, LEAF],
            vec![1, 3, 2, 3, 4],
            vec![2, 4, 2, 3, 4],
            vec![1, 0, 0, 0, 0],
        )
    }

    fn run(x: &[f32], rule: Option<Vec<i64>>, roots: &[i64]) -> (i64, Vec<i64>) {
        let (f, th, r, y, n, nan) = tables();
        let r = rule.unwrap_or(r);
        let rows = x.len() / 2;
        let mut out = vec![-1i64; rows * roots.len()];
        // SAFETY: sized above.
        let code = unsafe {
            kiln_tree_walk(
                x.as_ptr(),
                f.as_ptr(),
                th.as_ptr(),
                r.as_ptr(),
                y.as_ptr(),
                n.as_ptr(),
                nan.as_ptr(),
                roots.as_ptr(),
                out.as_mut_ptr(),
                rows as i64,
                2,
                roots.len() as i64,
                5,
            )
        };
        (code, out)
    }

    #[test]
    fn rows_walk_to_their_leaves_and_bad_tables_are_reported() {
        let x = [0.5, 1.0, 0.5, 3.0, 0.6, 0.0, f32::NAN, 5.0];
        assert_eq!(run(&x, None, &[0]), (0, vec![3, 4, 2, 4]));
        // A second tree rooted at a leaf.
        assert_eq!(run(&x[..2], None, &[0, 2]), (0, vec![3, 2]));
        assert_eq!(run(&x[..2], None, &[7]).0, 1);
        assert_eq!(run(&x[..2], Some(vec![9, 1, LEAF, LEAF, LEAF]), &[0]).0, 1);
        // yes/no of node 1 pointing back at node 0: a cycle.
        let cyc = walk(
            0,
            2,
            |_| Some(0.0),
            |i| Node {
                feature: 0,
                threshold: 1.0,
                rule: 0,
                yes: 1 - i as i64,
                no: 1 - i as i64,
                nan_yes: false,
            },
        );
        assert_eq!(cyc, Err(WalkError::Cycle));
        assert_eq!(
            walk(
                0,
                1,
                |_| None,
                |_| Node {
                    feature: 9,
                    threshold: 0.0,
                    rule: 0,
                    yes: 0,
                    no: 0,
                    nan_yes: false
                }
            ),
            Err(WalkError::Feature(9))
        );
    }

    #[test]
    fn lockstep_walks_match_the_checked_walk_for_every_rule() {
        // Random forests (complete trees of depth 1 to 6, leaves at every depth), rows with
        // NaNs, ties and values on both sides, every shared rule and mixed rules.
        let mut state = crate::routines::lcg(7);
        let mut next = move || (state() >> 33) as u32;
        let features = 5;
        for rules in [Some(0), Some(1), Some(2), Some(3), Some(4), Some(5), None] {
            let (mut f, mut th, mut r, mut y, mut n, mut nan) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            let mut roots = vec![];
            for _ in 0..6 {
                roots.push(f.len() as i64);
                // Breadth-first: node i's children at 2i+1, 2i+2 of its tree.
                let depth = 1 + next() % 6;
                let base = f.len() as i64;
                let count = (1 << (depth + 1)) - 1;
                for i in 0..count as i64 {
                    let inner = i < (1 << depth) - 1 && next() % 5 != 0;
                    f.push(i64::from(next() % features));
                    th.push((next() % 4) as f32 * 0.5);
                    r.push(if inner {
                        rules.unwrap_or(i64::from(next() % 6))
                    } else {
                        LEAF
                    });
                    y.push(if inner { base + 2 * i + 1 } else { base + i });
                    n.push(if inner { base + 2 * i + 2 } else { base + i });
                    nan.push((next() % 2) as u8);
                }
            }
            let rows = 29;
            let x: Vec<f32> = (0..rows * features as usize)
                .map(|_| match next() % 7 {
                    0 => f32::NAN,
                    k => (k - 1) as f32 * 0.25,
                })
                .collect();
            let trees = roots.len();
            let mut out = vec![-1i64; rows * trees];
            // SAFETY: every table holds `nodes` entries, x `rows·features`, out `rows·trees`.
            let code = unsafe {
                kiln_tree_walk(
                    x.as_ptr(),
                    f.as_ptr(),
                    th.as_ptr(),
                    r.as_ptr(),
                    y.as_ptr(),
                    n.as_ptr(),
                    nan.as_ptr(),
                    roots.as_ptr(),
                    out.as_mut_ptr(),
                    rows as i64,
                    i64::from(features),
                    trees as i64,
                    f.len() as i64,
                )
            };
            assert_eq!(code, 0);
            for row in 0..rows {
                let xr = &x[row * features as usize..][..features as usize];
                for (t, &root) in roots.iter().enumerate() {
                    let feature = |i: i64| xr.get(i as usize).map(|&v| f64::from(v));
                    let node = |i: usize| Node {
                        feature: f[i],
                        threshold: f64::from(th[i]),
                        rule: r[i],
                        yes: y[i],
                        no: n[i],
                        nan_yes: nan[i] != 0,
                    };
                    let want = walk(root, f.len(), feature, node).unwrap();
                    assert_eq!(
                        out[row * trees + t],
                        want,
                        "rules {rules:?} row {row} tree {t}"
                    );
                }
            }
        }
    }
}
