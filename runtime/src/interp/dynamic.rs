//! Ops whose result sizes depend on the data (`nonzero`, `nms`, `unique`): computed from the
//! operands alone; the caller binds the symbol each defines from the results' shapes.

use std::cmp::Ordering;

use ir::{DType, Data, Op, Tensor};

type R<T> = Result<T, String>;

/// The results of a data-dependent op.
pub fn compute(op: &Op, args: &[&Tensor]) -> R<Vec<Tensor>> {
    match op {
        Op::NonZero { .. } => Ok(vec![nonzero(args[0])?]),
        Op::DynIota { .. } => {
            let n = args[0].data().get_i128(0).max(0);
            if n > 1 << 28 {
                return Err(format!(
                    "a range of {n} elements is more than kiln makes (2^28)"
                ));
            }
            Ok(vec![ids(vec![n as usize], (0..n as i64).collect())?])
        }
        Op::Choose { .. } => {
            let pick = if args[0].data().get_i128(0) != 0 {
                1
            } else {
                2
            };
            Ok(vec![args[pick].clone()])
        }
        Op::Nms {
            center,
            thresholded,
            ..
        } => {
            let scalar = |i: usize| args[i].data().get_f64(0);
            let max = args[2].data().get_i128(0).clamp(0, i64::MAX as i128) as usize;
            let score = thresholded.then(|| scalar(4));
            Ok(vec![nms(args[0], args[1], max, scalar(3), score, *center)?])
        }
        Op::DynTopK { axis, largest, .. } => {
            let (x, a) = (args[0], *axis as usize);
            let n = x.shape()[a] as i128;
            let k = args[1].data().get_i128(0);
            if !(0..=n).contains(&k) {
                return Err(format!(
                    "k = {k} is outside 0..={n}, the length of axis {a}"
                ));
            }
            let (src, idx) = super::compute::topk(
                &super::wide::widen(x.data()),
                x.shape(),
                a,
                k as usize,
                *largest,
            );
            let mut shape = x.shape().to_vec();
            shape[a] = k as usize;
            let values = Tensor::new(shape.clone(), x.data().take_all(&src));
            let values = values.map_err(|e| e.to_string())?;
            Ok(vec![values, ids(shape, idx)?])
        }
        Op::Unique { axis, sorted, .. } => {
            unique(args[0], axis.first().map(|&a| a as usize), *sorted)
        }
        op => Err(format!("`{}` has no data-dependent form", op.mnemonic())),
    }
}

fn ids(shape: Vec<usize>, v: Vec<i64>) -> R<Tensor> {
    Tensor::from_vec(shape, v).map_err(|e| e.to_string())
}

fn nonzero(x: &Tensor) -> R<Tensor> {
    let shape = x.shape();
    let d = x.data();
    let hits: Vec<usize> = (0..x.numel())
        .filter(|&i| match x.dtype().is_float() {
            true => d.get_f64(i) != 0.0,
            false => d.get_i128(i) != 0,
        })
        .collect();
    let rank = shape.len();
    let mut out = vec![0i64; rank * hits.len()];
    for (k, &flat) in hits.iter().enumerate() {
        let mut rest = flat;
        for a in (0..rank).rev() {
            out[a * hits.len() + k] = (rest % shape[a]) as i64;
            rest /= shape[a];
        }
    }
    ids(vec![rank, hits.len()], out)
}

/// A box as (x_min, y_min, x_max, y_max).
fn corners(b: &[f64], center: bool) -> [f64; 4] {
    if center {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh]
    } else {
        [
            b[1].min(b[3]),
            b[0].min(b[2]),
            b[1].max(b[3]),
            b[0].max(b[2]),
        ]
    }
}

/// Whether `a` and `b` overlap by more than `threshold` (ONNX's reference arithmetic).
fn suppresses(a: [f64; 4], b: [f64; 4], threshold: f64) -> bool {
    let (ix0, ix1) = (a[0].max(b[0]), a[2].min(b[2]));
    let (iy0, iy1) = (a[1].max(b[1]), a[3].min(b[3]));
    if ix1 <= ix0 || iy1 <= iy0 {
        return false;
    }
    let inter = (ix1 - ix0) * (iy1 - iy0);
    let area = |c: [f64; 4]| (c[2] - c[0]) * (c[3] - c[1]);
    let (a1, a2) = (area(a), area(b));
    let union = a1 + a2 - inter;
    if inter <= 0.0 || a1 <= 0.0 || a2 <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > threshold
}

fn nms(
    boxes: &Tensor,
    scores: &Tensor,
    max: usize,
    iou: f64,
    score: Option<f64>,
    center: bool,
) -> R<Tensor> {
    let (batches, n) = (boxes.shape()[0], boxes.shape()[1]);
    let classes = scores.shape()[1];
    let (bd, sd) = (boxes.data(), scores.data());
    let mut out = Vec::new();
    for b in 0..batches {
        let boxes_b: Vec<[f64; 4]> = (0..n)
            .map(|i| {
                let at = (b * n + i) * 4;
                let v: Vec<f64> = (0..4).map(|k| bd.get_f64(at + k)).collect();
                corners(&v, center)
            })
            .collect();
        for c in 0..classes {
            let at = (b * classes + c) * n;
            let mut cand: Vec<(f64, usize)> = (0..n)
                .map(|i| (sd.get_f64(at + i), i))
                .filter(|&(s, _)| score.is_none_or(|t| s > t))
                .collect();
            // Highest score first; equal scores by lower index.
            cand.sort_by(|x, y| {
                // A total order (NaN scores sort as the largest, as total_cmp has them).
                y.0.total_cmp(&x.0).then(x.1.cmp(&y.1))
            });
            let mut kept: Vec<usize> = Vec::new();
            for (_, i) in cand {
                if kept.len() >= max {
                    break;
                }
                if kept
                    .iter()
                    .all(|&k| !suppresses(boxes_b[i], boxes_b[k], iou))
                {
                    kept.push(i);
                    out.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let k = out.len() / 3;
    ids(vec![k, 3], out)
}

/// A value for ordering and equality: integers exactly, floats by value in a total order
/// (-0 equals 0; every NaN equals every other and sorts last, as numpy's unique has them).
#[derive(Clone, Copy)]
enum Key {
    I(i128),
    F(f64),
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::I(a), Key::I(b)) => a.cmp(b),
            (Key::F(a), Key::F(b)) => match (a.is_nan(), b.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                // Not NaN: a partial order that is total (and -0 == 0).
                _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            },
            (Key::I(_), Key::F(_)) => Ordering::Less,
            (Key::F(_), Key::I(_)) => Ordering::Greater,
        }
    }
}

fn keys(d: &Data, dtype: DType, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| match dtype.is_float() {
            true => Key::F(d.get_f64(i)),
            false => Key::I(d.get_i128(i)),
        })
        .collect()
}

fn unique(x: &Tensor, axis: Option<usize>, sorted: bool) -> R<Vec<Tensor>> {
    let shape = x.shape().to_vec();
    let all = keys(x.data(), x.dtype(), x.numel());
    // Slices as index lists into the flat data.
    let (n, outer, inner) = match axis {
        None => (x.numel(), 1, 1),
        Some(a) => (
            shape[a],
            shape[..a].iter().product::<usize>(),
            shape[a + 1..].iter().product::<usize>(),
        ),
    };
    let slice = |j: usize| -> Vec<usize> {
        match axis {
            None => vec![j],
            Some(_) => (0..outer)
                .flat_map(|o| (0..inner).map(move |i| (o * n + j) * inner + i))
                .collect(),
        }
    };
    let key = |j: usize| -> Vec<Key> { slice(j).into_iter().map(|i| all[i]).collect() };
    let cmp = |a: &Vec<Key>, b: &Vec<Key>| {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.cmp(y))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(a.len().cmp(&b.len()))
    };
    // Distinct slices in order of first occurrence, with counts: slices sorted (stably) by
    // value, then grouped.
    let keys: Vec<Vec<Key>> = (0..n).map(key).collect();
    let mut by_value: Vec<usize> = (0..n).collect();
    by_value.sort_by(|&a, &b| cmp(&keys[a], &keys[b]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &j in &by_value {
        match groups.last_mut() {
            Some(g) if cmp(&keys[g[0]], &keys[j]) == Ordering::Equal => g.push(j),
            _ => groups.push(vec![j]),
        }
    }
    // Each group's first member is its first occurrence (the sort is stable).
    groups.sort_by_key(|g| g[0]);
    let firsts: Vec<usize> = groups.iter().map(|g| g[0]).collect();
    let found: Vec<&Vec<Key>> = firsts.iter().map(|&f| &keys[f]).collect();
    let counts: Vec<i64> = groups.iter().map(|g| g.len() as i64).collect();
    let mut inverse = vec![0usize; n];
    for (u, g) in groups.iter().enumerate() {
        for &j in g {
            inverse[j] = u;
        }
    }
    let mut order: Vec<usize> = (0..found.len()).collect();
    if sorted {
        order.sort_by(|&a, &b| cmp(found[a], found[b]));
    }
    let mut rank = vec![0usize; order.len()];
    for (r, &u) in order.iter().enumerate() {
        rank[u] = r;
    }
    let u = order.len();
    // The values: the chosen slices, gathered from the data.
    let index: Vec<usize> = match axis {
        None => order.iter().map(|&o| firsts[o]).collect(),
        Some(_) => (0..outer)
            .flat_map(|o| {
                order
                    .iter()
                    .flat_map(move |&k| (0..inner).map(move |i| (o, k, i)))
            })
            .map(|(o, k, i)| (o * n + firsts[k]) * inner + i)
            .collect(),
    };
    let mut vshape = shape.clone();
    match axis {
        None => vshape = vec![u],
        Some(a) => vshape[a] = u,
    }
    let values = Tensor::new(vshape, x.data().take_all(&index)).map_err(|e| e.to_string())?;
    let pick = |v: Vec<usize>| v.into_iter().map(|i| i as i64).collect::<Vec<i64>>();
    Ok(vec![
        values,
        ids(vec![u], pick(order.iter().map(|&o| firsts[o]).collect()))?,
        ids(vec![n], pick(inverse.iter().map(|&i| rank[i]).collect()))?,
        ids(vec![u], order.iter().map(|&o| counts[o]).collect())?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::Dim;

    /// NaN scores and values sort in a total order (a comparator that is not one may make
    /// the standard sort panic on 16 or more elements).
    #[test]
    fn nan_is_ordered_not_a_panic() {
        let n = 40;
        let boxes: Vec<f32> = (0..n)
            .flat_map(|i| [i as f32 * 3.0, 0.0, i as f32 * 3.0 + 1.0, 1.0])
            .collect();
        let scores: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { f32::NAN } else { i as f32 })
            .collect();
        let boxes = Tensor::from_vec(vec![1, n, 4], boxes).unwrap();
        let scores = Tensor::from_vec(vec![1, 1, n], scores).unwrap();
        let (max, iou) = (Tensor::scalar(100i64), Tensor::scalar(0.5f32));
        let op = Op::Nms {
            center: false,
            thresholded: false,
            count: Dim::sym("k"),
        };
        let out = compute(&op, &[&boxes, &scores, &max, &iou, &iou]).unwrap();
        // Disjoint boxes: every one is kept, NaN scores first (total_cmp's largest).
        assert_eq!(out[0].shape(), &[n, 3]);
        let xs: Vec<f32> = (0..3 * n)
            .map(|i| if i % 7 == 0 { f32::NAN } else { (i % 5) as f32 })
            .collect();
        let x = Tensor::from_vec(vec![3 * n], xs).unwrap();
        let op = Op::Unique {
            axis: vec![],
            sorted: true,
            count: Dim::sym("u"),
        };
        let out = compute(&op, &[&x]).unwrap();
        // 0..5, then one NaN.
        assert_eq!(out[0].shape(), &[6]);
        assert!(out[0].as_slice::<f32>().unwrap()[5].is_nan());
    }
}
