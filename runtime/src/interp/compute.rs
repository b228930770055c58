//! Reference kernels for the ops that do more than map or move elements: reductions, arg
//! reductions, top-k, gather and scatter, contractions and sliding windows. Straightforward
//! loops over widened data; accuracy first (f64 accumulation, compensated sums), speed second.

use std::cmp::Ordering;

use ir::{DType, Data, ReduceKind, ScatterReduction};

use super::index::{for_each_index, numel, strides, transpose};
use super::wide::{fmax, fmin, int_range, narrow, Wide};

/// Neumaier-compensated running sum. It starts from its first element (not from +0), so the
/// sum of one element is that element, -0 included; an empty sum is +0.
#[derive(Clone, Copy, Default)]
struct Sum {
    s: f64,
    c: f64,
    any: bool,
}

impl Sum {
    fn add(&mut self, x: f64) {
        if !self.any {
            self.s = x;
            self.any = true;
            return;
        }
        let t = self.s + x;
        if self.s.abs() >= x.abs() {
            self.c += (self.s - t) + x;
        } else {
            self.c += (x - t) + self.s;
        }
        self.s = t;
    }

    fn get(self) -> f64 {
        if self.s.is_finite() && self.c != 0.0 {
            self.s + self.c
        } else {
            self.s
        }
    }
}

/// For each input element, the flat position of the output element it reduces into.
fn reduce_targets(shape: &[usize], axes: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let out_shape: Vec<usize> = (0..shape.len())
        .filter(|a| !axes.contains(a))
        .map(|a| shape[a])
        .collect();
    let ost = strides(&out_shape);
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let mut targets = Vec::with_capacity(numel(shape));
    for_each_index(shape, |i| {
        targets.push(kept.iter().zip(&ost).map(|(&a, &s)| i[a] * s).sum());
    });
    (out_shape, targets)
}

pub fn reduce(kind: ReduceKind, x: &Wide, shape: &[usize], axes: &[usize], dtype: DType) -> Wide {
    let (out_shape, targets) = reduce_targets(shape, axes);
    let n = numel(&out_shape);
    match x {
        Wide::F(v) => {
            if kind == ReduceKind::Sum {
                let mut acc = vec![Sum::default(); n];
                for (&t, &x) in targets.iter().zip(v) {
                    acc[t].add(x);
                }
                return Wide::F(acc.into_iter().map(Sum::get).collect());
            }
            let (init, f): (f64, fn(f64, f64) -> f64) = match kind {
                ReduceKind::Prod => (1.0, |a, b| a * b),
                ReduceKind::Max => (f64::NEG_INFINITY, fmax),
                ReduceKind::Min => (f64::INFINITY, fmin),
                ReduceKind::Sum => unreachable!("handled above"),
            };
            let mut acc = vec![init; n];
            for (&t, &x) in targets.iter().zip(v) {
                acc[t] = f(acc[t], x);
            }
            Wide::F(acc)
        }
        Wide::I(v) => {
            let (lo, hi) = int_range(dtype);
            let (init, f): (i128, fn(i128, i128) -> i128) = match kind {
                ReduceKind::Sum => (0, i128::wrapping_add),
                ReduceKind::Prod => (1, i128::wrapping_mul),
                ReduceKind::Max => (lo, i128::max),
                ReduceKind::Min => (hi, i128::min),
            };
            let mut acc = vec![init; n];
            for (&t, &x) in targets.iter().zip(v) {
                acc[t] = f(acc[t], x);
            }
            Wide::I(acc)
        }
        Wide::B(_) => unreachable!("the verifier admits no bool reductions"),
    }
}

/// `dynamic_quantize` of f32 `x` (any shape): the quantized values, the scale and the zero
/// point, each step as the op's definition writes it in ops (reductions over every axis,
/// then scalar f32 arithmetic, NaN-propagating extremes, the casts of [`narrow`]).
pub fn dynamic_quantize(x: &Wide, shape: &[usize]) -> [Data; 3] {
    let all: Vec<usize> = (0..shape.len()).collect();
    let extreme = |kind| match reduce(kind, x, shape, &all, DType::F32) {
        Wide::F(v) => v[0] as f32,
        _ => unreachable!("an f32 reduction"),
    };
    let f = |v: f64| v as f32;
    let hi = f(fmax(f64::from(extreme(ReduceKind::Max)), 0.0));
    let lo = f(fmin(f64::from(extreme(ReduceKind::Min)), 0.0));
    let range = if hi == lo { 1.0 } else { hi - lo };
    let s = range / 255.0;
    let z = f(fmin(fmax(f64::from(0.0 - lo / s), 0.0), 255.0)).round_ties_even();
    let q: Vec<f64> = match x {
        Wide::F(v) => v
            .iter()
            .map(|&x| f64::from(((x as f32) / s).round_ties_even() + z))
            .collect(),
        _ => unreachable!("f32 operand"),
    };
    [
        narrow(&Wide::F(q), DType::U8),
        Data::F32(vec![s]),
        narrow(&Wide::F(vec![f64::from(z)]), DType::U8),
    ]
}

/// NaN-aware ordering: NaN sorts above everything.
fn fcmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares element `i` with element `j` of `x`.
fn cmp_at(x: &Wide, i: usize, j: usize) -> Ordering {
    match x {
        Wide::F(v) => fcmp(v[i], v[j]),
        Wide::I(v) => v[i].cmp(&v[j]),
        Wide::B(v) => v[i].cmp(&v[j]),
    }
}

fn is_nan_at(x: &Wide, i: usize) -> bool {
    matches!(x, Wide::F(v) if v[i].is_nan())
}

/// Splits `shape` around `axis` into (outer, extent, inner).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// argmax/argmin: the first (or last) extreme element; a NaN counts as the extreme.
pub fn arg_reduce(x: &Wide, shape: &[usize], axis: usize, max: bool, last: bool) -> Vec<i64> {
    let (outer, d, inner) = around(shape, axis);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * d + k) * inner + i;
            let mut best = 0;
            for k in 1..d {
                let (v, b) = (at(k), at(best));
                let better = match (is_nan_at(x, v), is_nan_at(x, b)) {
                    (true, false) => true,
                    (true, true) => last,
                    (false, true) => false,
                    _ => {
                        let ord = cmp_at(x, v, b);
                        let ord = if max { ord } else { ord.reverse() };
                        ord == Ordering::Greater || (last && ord == Ordering::Equal)
                    }
                };
                if better {
                    best = k;
                }
            }
            out.push(best as i64);
        }
    }
    out
}

/// The k largest (or smallest) along `axis`, sorted, ties to the lower index.
pub fn topk(
    x: &Wide,
    shape: &[usize],
    axis: usize,
    k: usize,
    largest: bool,
) -> (Vec<usize>, Vec<i64>) {
    let (outer, d, inner) = around(shape, axis);
    let mut src = vec![0usize; outer * k * inner];
    let mut idx = vec![0i64; outer * k * inner];
    let mut order: Vec<usize> = Vec::with_capacity(d);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * d + j) * inner + i;
            order.clear();
            order.extend(0..d);
            order.sort_by(|&a, &b| {
                let ord = cmp_at(x, at(a), at(b));
                if largest {
                    ord.reverse()
                } else {
                    ord
                }
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                let dst = (o * k + r) * inner + i;
                src[dst] = at(j);
                idx[dst] = j as i64;
            }
        }
    }
    (src, idx)
}

/// Resolves a possibly negative index against an extent.
fn resolve(i: i128, n: usize, what: &str) -> Result<usize, String> {
    let n_i = n as i128;
    let j = if i < 0 { i + n_i } else { i };
    if (0..n_i).contains(&j) {
        Ok(j as usize)
    } else {
        Err(format!(
            "{what} {i} is out of range for an axis of size {n}"
        ))
    }
}

fn indices(idx: &Wide) -> &[i128] {
    match idx {
        Wide::I(v) => v,
        _ => unreachable!("the verifier admits only integer indices"),
    }
}

pub fn gather(shape: &[usize], idx: &Wide, axis: usize) -> Result<Vec<usize>, String> {
    let (outer, d, inner) = around(shape, axis);
    let idx = indices(idx);
    let resolved: Vec<usize> = idx
        .iter()
        .map(|&i| resolve(i, d, "index"))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &j in &resolved {
            out.extend((0..inner).map(|i| (o * d + j) * inner + i));
        }
    }
    Ok(out)
}

/// `resample` (see the op table) of `x` along `axis` by the taps `idx` and `w` (`[out,
/// taps]`): each product rounded to the dtype, summed left to right with each sum rounded.
pub fn resample(args: &[&ir::Tensor], idx: &Wide, axis: usize) -> Result<Data, String> {
    let (x, w) = (args[0], args[2]);
    let dtype = x.dtype();
    let round = rounding(dtype);
    let (outer, d, inner) = around(x.shape(), axis);
    let (out, taps) = (args[1].shape()[0], args[1].shape()[1]);
    let (xs, ws) = (floats(x), floats(w));
    let at: Vec<usize> = indices(idx)
        .iter()
        .map(|&i| match i {
            0.. if (i as usize) < d => Ok(i as usize),
            _ => Err(format!(
                "resample index {i} is out of range for an axis of size {d}"
            )),
        })
        .collect::<Result<_, _>>()?;
    let mut y = Vec::with_capacity(outer * out * inner);
    for o in 0..outer {
        for p in 0..out {
            for i in 0..inner {
                let mut acc = None;
                for t in 0..taps {
                    let k = p * taps + t;
                    let v = round(ws[k] * xs[(o * d + at[k]) * inner + i]);
                    acc = Some(acc.map_or(v, |a| round(a + v)));
                }
                y.push(acc.unwrap_or(0.0));
            }
        }
    }
    Ok(Data::from_f64s(dtype, &y))
}

/// The flat offsets addressed by the index tuples of gather_nd/scatter_nd: for tuple t, the
/// start of the addressed slice (of `slice` elements) in the data.
fn tuple_offsets(
    data_shape: &[usize],
    idx_shape: &[usize],
    idx: &Wide,
    batch_dims: usize,
) -> Result<(Vec<usize>, usize), String> {
    let m = *idx_shape.last().unwrap_or(&0);
    let idx = indices(idx);
    let batch: usize = data_shape[..batch_dims].iter().product();
    let per_batch = (idx.len() / m.max(1)).checked_div(batch).unwrap_or(0);
    let slice: usize = data_shape[batch_dims + m..].iter().product();
    let batch_stride: usize = data_shape[batch_dims..].iter().product();
    let addr = &data_shape[batch_dims..batch_dims + m];
    let ast = strides(addr);
    let mut out = Vec::with_capacity(batch * per_batch);
    for b in 0..batch {
        for t in 0..per_batch {
            let tuple = &idx[(b * per_batch + t) * m..(b * per_batch + t + 1) * m];
            let mut off = 0;
            for ((&i, &n), &s) in tuple.iter().zip(addr).zip(&ast) {
                off += resolve(i, n, "index")? * s;
            }
            out.push(b * batch_stride + off * slice);
        }
    }
    Ok((out, slice))
}

pub fn gather_nd(
    data_shape: &[usize],
    idx_shape: &[usize],
    idx: &Wide,
    batch_dims: usize,
) -> Result<Vec<usize>, String> {
    let (offsets, slice) = tuple_offsets(data_shape, idx_shape, idx, batch_dims)?;
    Ok(offsets.iter().flat_map(|&o| o..o + slice).collect())
}

pub fn scatter_nd(
    data: &Wide,
    data_shape: &[usize],
    idx_shape: &[usize],
    idx: &Wide,
    updates: &Wide,
    reduction: ScatterReduction,
) -> Result<Wide, String> {
    let (offsets, slice) = tuple_offsets(data_shape, idx_shape, idx, 0)?;
    let mut out = data.clone();
    for (t, &o) in offsets.iter().enumerate() {
        for e in 0..slice {
            let (dst, src) = (o + e, t * slice + e);
            match (&mut out, updates) {
                (Wide::F(d), Wide::F(u)) => {
                    d[dst] = match reduction {
                        ScatterReduction::None => u[src],
                        ScatterReduction::Add => d[dst] + u[src],
                        ScatterReduction::Mul => d[dst] * u[src],
                        ScatterReduction::Max => fmax(d[dst], u[src]),
                        ScatterReduction::Min => fmin(d[dst], u[src]),
                    }
                }
                (Wide::I(d), Wide::I(u)) => {
                    d[dst] = match reduction {
                        ScatterReduction::None => u[src],
                        ScatterReduction::Add => d[dst].wrapping_add(u[src]),
                        ScatterReduction::Mul => d[dst].wrapping_mul(u[src]),
                        ScatterReduction::Max => d[dst].max(u[src]),
                        ScatterReduction::Min => d[dst].min(u[src]),
                    }
                }
                (Wide::B(d), Wide::B(u)) => d[dst] = u[src],
                _ => unreachable!("data and updates share a dtype"),
            }
        }
    }
    Ok(out)
}

/// Multiply-accumulate over widened operands, dispatching once on the representation.
enum Acc<'a> {
    F(&'a [f64], &'a [f64]),
    I(&'a [i128], &'a [i128]),
}

fn acc_pair<'a>(a: &'a Wide, b: &'a Wide) -> Acc<'a> {
    match (a, b) {
        (Wide::F(x), Wide::F(y)) => Acc::F(x, y),
        (Wide::I(x), Wide::I(y)) => Acc::I(x, y),
        _ => unreachable!("the verifier admits only numeric operands of one dtype"),
    }
}

/// `qdot4`: rows `x` (`k` each) by the blocked 4-bit weight `w` (`n` rows of `bytes`), each
/// value dequantized in f32 as `(q − zero) · scale` (what the kernels use), summed in f64.
pub fn qdot4(
    x: &[f32],
    k: usize,
    n: usize,
    w: &[u8],
    sz: (&[f32], &[f32]),
    block: usize,
) -> Vec<f32> {
    let (scale, zero) = sz;
    let (bytes, blocks) = (w.len() / n.max(1), k.div_ceil(block));
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0f32; rows * n];
    for j in 0..n {
        let wj: Vec<f32> = (0..k)
            .map(|l| {
                let q = (w[j * bytes + l / 2] >> (4 * (l % 2))) & 15;
                let b = j * blocks + l / block;
                (f32::from(q) - zero[b]) * scale[b]
            })
            .collect();
        for i in 0..rows {
            let xi = &x[i * k..][..k];
            let sum: f64 = xi
                .iter()
                .zip(&wj)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            out[i * n + j] = sum as f32;
        }
    }
    out
}

pub struct DotDims<'a> {
    pub lhs_batch: &'a [usize],
    pub rhs_batch: &'a [usize],
    pub lhs_contract: &'a [usize],
    pub rhs_contract: &'a [usize],
}

pub fn dot(l: &Wide, ls: &[usize], r: &Wide, rs: &[usize], d: &DotDims) -> Wide {
    let free = |rank: usize, b: &[usize], c: &[usize]| -> Vec<usize> {
        (0..rank)
            .filter(|a| !b.contains(a) && !c.contains(a))
            .collect()
    };
    let lfree = free(ls.len(), d.lhs_batch, d.lhs_contract);
    let rfree = free(rs.len(), d.rhs_batch, d.rhs_contract);
    let prod = |s: &[usize], axes: &[usize]| -> usize { axes.iter().map(|&a| s[a]).product() };
    let (b, m, k, n) = (
        prod(ls, d.lhs_batch),
        prod(ls, &lfree),
        prod(ls, d.lhs_contract),
        prod(rs, &rfree),
    );
    let lperm: Vec<usize> = [d.lhs_batch, &lfree, d.lhs_contract].concat();
    let rperm: Vec<usize> = [d.rhs_batch, &rfree, d.rhs_contract].concat();
    let lt = l.take(&transpose(ls, &lperm).1);
    let rt = r.take(&transpose(rs, &rperm).1);
    // out[b, m, n] = sum over k of lhs[b, m, k] * rhs[b, n, k]
    fn contract<T: Copy>(
        x: &[T],
        y: &[T],
        (b, m, n, k): (usize, usize, usize, usize),
        dot: impl Fn(&[T], &[T]) -> T,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(b * m * n);
        for bi in 0..b {
            for mi in 0..m {
                let row = &x[(bi * m + mi) * k..][..k];
                for ni in 0..n {
                    out.push(dot(row, &y[(bi * n + ni) * k..][..k]));
                }
            }
        }
        out
    }
    let dims = (b, m, n, k);
    match acc_pair(&lt, &rt) {
        Acc::F(x, y) => Wide::F(contract(x, y, dims, |p, q| {
            p.iter().zip(q).map(|(a, b)| a * b).sum()
        })),
        Acc::I(x, y) => Wide::I(contract(x, y, dims, |p, q| {
            p.iter()
                .zip(q)
                .fold(0i128, |s, (a, b)| s.wrapping_add(a.wrapping_mul(*b)))
        })),
    }
}

/// Strides, dilations and low padding of a sliding window over some axes.
pub struct Window<'a> {
    pub stride: &'a [i64],
    pub dilation: &'a [i64],
    pub pad_low: &'a [i64],
}

/// For each output position, the (window position, input offset) pairs that fall inside the
/// input; padding positions are simply absent. Only in-bounds window positions are visited, so
/// a huge window over a small padded input costs no more than the input.
fn taps(
    in_shape: &[usize],
    win: &[usize],
    out_shape: &[usize],
    w: &Window,
) -> Vec<Vec<(usize, usize)>> {
    let ist = strides(in_shape);
    let wst = strides(win);
    let mut out = Vec::with_capacity(numel(out_shape));
    for_each_index(out_shape, |o| {
        // Per axis: the window positions k (and input coordinates) that land inside the input.
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(o.len());
        let mut lo = Vec::with_capacity(o.len());
        for a in 0..o.len() {
            let base = o[a] as i128 * w.stride[a] as i128 - w.pad_low[a] as i128;
            let (n, d, k) = (in_shape[a] as i128, w.dilation[a] as i128, win[a] as i128);
            let k_lo = if base >= 0 { 0 } else { (-base + d - 1) / d };
            let k_hi = if n - 1 - base < 0 {
                -1
            } else {
                ((n - 1 - base) / d).min(k - 1)
            };
            if k_lo > k_hi {
                out.push(Vec::new());
                return;
            }
            ranges.push((k_lo as usize, (k_hi - k_lo + 1) as usize));
            lo.push(base);
        }
        let counts: Vec<usize> = ranges.iter().map(|r| r.1).collect();
        let mut list = Vec::with_capacity(numel(&counts));
        for_each_index(&counts, |j| {
            let (mut kp, mut off) = (0usize, 0usize);
            for a in 0..j.len() {
                let k = ranges[a].0 + j[a];
                kp += k * wst[a];
                off += (lo[a] + k as i128 * w.dilation[a] as i128) as usize * ist[a];
            }
            list.push((kp, off));
        });
        out.push(list);
    });
    out
}

/// [`conv`] into a channel-blocked image (`conv_blocked`): the result `[N, O/b, OH, OW, b]`
/// (`out_shape`) from `x` blocked (`[N, C/b, H, W, b]`) or plain (`[N, C, H, W]`), computed as
/// the plain conv of the plain input.
#[allow(clippy::too_many_arguments)]
pub fn conv_blocked(
    x: &Wide,
    xs: &[usize],
    w: &Wide,
    ws: &[usize],
    win: &Window,
    groups: usize,
    out_shape: &[usize],
) -> Wide {
    let b = out_shape[4];
    // Element [n, c, y, x] (c of the plain shape `s`) of a blocked [n, cb, y, x, b] array,
    // row-major, and its inverse.
    let blocked = |s: &[usize], cb: usize| -> Vec<usize> {
        let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
        let mut at = Vec::with_capacity(n * c * hw);
        for i in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    at.push(((i * cb + ch / b) * hw + p) * b + ch % b);
                }
            }
        }
        at
    };
    let (plain, xp) = if xs.len() == 5 {
        // The channels the filters read: all lanes, or (a dense conv) the first ones of a
        // last block that is partly padding.
        let plain = [xs[0], (ws[1] * groups).min(xs[1] * b), xs[2], xs[3]];
        (plain, x.take(&blocked(&plain, xs[1])))
    } else {
        ([xs[0], xs[1], xs[2], xs[3]], x.clone())
    };
    let os = [out_shape[0], out_shape[1] * b, out_shape[2], out_shape[3]];
    let r = conv(&xp, &plain, w, ws, win, groups, &os);
    // Result element i (blocked) is plain element inv[i].
    let fwd = blocked(&os, out_shape[1]);
    let mut inv = vec![0; fwd.len()];
    for (p, &q) in fwd.iter().enumerate() {
        inv[q] = p;
    }
    r.take(&inv)
}

pub fn conv(
    x: &Wide,
    xs: &[usize],
    w: &Wide,
    ws: &[usize],
    win: &Window,
    groups: usize,
    out_shape: &[usize],
) -> Wide {
    let (n, c, o) = (xs[0], xs[1], ws[0]);
    let cg = ws[1];
    let og = o / groups;
    let is: usize = xs[2..].iter().product();
    let ks: usize = ws[2..].iter().product();
    let taps = taps(&xs[2..], &ws[2..], &out_shape[2..], win);
    // out[n, o, p] = sum over taps t of p and channels ch of its group: x[n, g*cg + ch, t] * w[o, ch, t]
    fn accumulate<T: Copy>(
        xv: &[T],
        wv: &[T],
        zero: T,
        mac: impl Fn(T, T, T) -> T,
        (n, c, o, cg, og, is, ks): (usize, usize, usize, usize, usize, usize, usize),
        taps: &[Vec<(usize, usize)>],
    ) -> Vec<T> {
        let os = taps.len();
        let mut out = vec![zero; n * o * os];
        for ni in 0..n {
            for oi in 0..o {
                let g = oi / og;
                for (p, t) in taps.iter().enumerate() {
                    let mut acc = zero;
                    for &(kp, off) in t {
                        for ch in 0..cg {
                            let xe = xv[(ni * c + g * cg + ch) * is + off];
                            acc = mac(acc, xe, wv[(oi * cg + ch) * ks + kp]);
                        }
                    }
                    out[(ni * o + oi) * os + p] = acc;
                }
            }
        }
        out
    }
    let geom = (n, c, o, cg, og, is, ks);
    match acc_pair(x, w) {
        Acc::F(xv, wv) => {
            let mut out = accumulate(xv, wv, 0.0, |a, p, q| a + p * q, geom, &taps);
            // Padding is zeros (ONNX): a tap on padding multiplies 0 by its weight, which is
            // NaN for an infinite or NaN weight. The taps skip padding, so add that back.
            let bad: Vec<bool> = (0..o * ks)
                .map(|i| (0..cg).any(|ch| !wv[((i / ks) * cg + ch) * ks + i % ks].is_finite()))
                .collect();
            if bad.iter().any(|&b| b) {
                let os = taps.len();
                for (p, t) in taps.iter().enumerate() {
                    if t.len() == ks {
                        continue;
                    }
                    let mut present = vec![false; ks];
                    for &(kp, _) in t {
                        present[kp] = true;
                    }
                    for oi in 0..o {
                        if (0..ks).any(|kp| !present[kp] && bad[oi * ks + kp]) {
                            for ni in 0..n {
                                out[(ni * o + oi) * os + p] = f64::NAN;
                            }
                        }
                    }
                }
            }
            Wide::F(out)
        }
        Acc::I(xv, wv) => Wide::I(accumulate(
            xv,
            wv,
            0,
            |a: i128, p: i128, q| a.wrapping_add(p.wrapping_mul(q)),
            geom,
            &taps,
        )),
    }
}

pub fn reduce_window(
    kind: ReduceKind,
    x: &Wide,
    xs: &[usize],
    window: &[usize],
    win: &Window,
    out_shape: &[usize],
    dtype: DType,
) -> Wide {
    let taps = taps(xs, window, out_shape, win);
    match x {
        Wide::F(v) => Wide::F(
            taps.iter()
                .map(|t| {
                    let vals = t.iter().map(|&(_, off)| v[off]);
                    match kind {
                        ReduceKind::Sum => {
                            let mut s = Sum::default();
                            vals.for_each(|x| s.add(x));
                            s.get()
                        }
                        ReduceKind::Prod => vals.product(),
                        ReduceKind::Max => vals.fold(f64::NEG_INFINITY, fmax),
                        ReduceKind::Min => vals.fold(f64::INFINITY, fmin),
                    }
                })
                .collect(),
        ),
        Wide::I(v) => {
            let (lo, hi) = int_range(dtype);
            Wide::I(
                taps.iter()
                    .map(|t| {
                        let vals = t.iter().map(|&(_, off)| v[off]);
                        match kind {
                            ReduceKind::Sum => vals.fold(0, i128::wrapping_add),
                            ReduceKind::Prod => vals.fold(1, i128::wrapping_mul),
                            ReduceKind::Max => vals.fold(lo, i128::max),
                            ReduceKind::Min => vals.fold(hi, i128::min),
                        }
                    })
                    .collect(),
            )
        }
        Wide::B(_) => unreachable!("the verifier admits no bool windows"),
    }
}

/// Elementwise `cond ? a : b` on data of one dtype.
pub fn select(cond: &[bool], a: &Data, b: &Data) -> Data {
    ir::with_data!(a, x, W => match b {
        W(y) => W(cond.iter().zip(x.iter().zip(y)).map(|(&c, (&p, &q))| if c { p } else { q }).collect()),
        _ => unreachable!("the verifier admits only operands of one dtype"),
    })
}

/// The leaf index of every row of `args[0]` in every tree (the `tree_walk` op; the tables
/// follow, see its docs), by the walk the host routine shares.
pub fn tree_walk(args: &[&ir::Tensor]) -> Result<Vec<i64>, String> {
    use kernel::routines::trees::{walk, Node};
    let (x, roots) = (args[0], args[7]);
    let (rows, features) = (x.shape()[0], x.shape()[1]);
    let ints = |i: usize| -> Result<&[i64], String> {
        args[i]
            .as_slice::<i64>()
            .ok_or_else(|| "a tree table is not i64".to_string())
    };
    let (feature, rule, yes, no, roots) = (
        ints(1)?,
        ints(3)?,
        ints(4)?,
        ints(5)?,
        roots.as_slice::<i64>().ok_or("the roots are not i64")?,
    );
    let nan_yes = args[6].as_slice::<bool>().ok_or("nan_yes is not bool")?;
    let threshold = args[2].data();
    let nodes = feature.len();
    let node = |i: usize| Node {
        feature: feature[i],
        threshold: threshold.get_f64(i),
        rule: rule[i],
        yes: yes[i],
        no: no[i],
        nan_yes: nan_yes[i],
    };
    let mut out = Vec::with_capacity(rows * roots.len());
    for r in 0..rows {
        let at = |f: i64| {
            usize::try_from(f)
                .ok()
                .filter(|&f| f < features)
                .map(|f| x.data().get_f64(r * features + f))
        };
        for &root in roots {
            out.push(walk(root, nodes, at, node).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// `lstm` (see the op table): every step's h (`[S, B, H]`) and the last h and c (`[B, H]`). Each
/// step rounds to the dtype where the layer written as separate ops would: the recurrent
/// product (summed in f64), the pre-activation, each gate, each product and the new states.
pub fn lstm(args: &[&ir::Tensor], reverse: bool) -> [Data; 3] {
    let mut c = floats(args[3]);
    let (y, h) = recurrence(args, reverse, (4, 2), |x, round, b| {
        let (sigmoid, tanh) = activations(round);
        let cs = &mut c[b * x.hidden..][..x.hidden];
        (0..x.hidden)
            .map(|u| {
                let pre = |g: usize| round(x.xw(g, u) + x.dot(g, u, x.h));
                let (i, o, f) = (sigmoid(pre(0)), sigmoid(pre(1)), sigmoid(pre(2)));
                let cand = tanh(pre(3));
                cs[u] = round(round(f * cs[u]) + round(i * cand));
                round(o * tanh(cs[u]))
            })
            .collect()
    });
    let dtype = args[0].dtype();
    [y, h, c].map(|v| Data::from_f64s(dtype, &v))
}

/// `gru` (see the op table): every step's h (`[S, B, H]`) and the last h (`[B, H]`), rounded
/// as [`lstm`]; the reset gate applies after the product with `linear`, else before it (to the
/// whole previous h).
pub fn gru(args: &[&ir::Tensor], reverse: bool, linear: bool) -> [Data; 2] {
    let rbn = floats(args[2]);
    let (y, h) = recurrence(args, reverse, (3, 3), |x, round, _| {
        let (sigmoid, tanh) = activations(round);
        let pre = |g: usize, u: usize| round(x.xw(g, u) + x.dot(g, u, x.h));
        let r: Vec<f64> = (0..x.hidden).map(|u| sigmoid(pre(1, u))).collect();
        let rh: Vec<f64> = (0..x.hidden).map(|k| round(r[k] * x.h[k])).collect();
        (0..x.hidden)
            .map(|u| {
                let z = sigmoid(pre(0, u));
                let hn = match linear {
                    true => round(r[u] * round(x.dot(2, u, x.h) + rbn[u])),
                    false => round(x.dot(2, u, &rh) + rbn[u]),
                };
                let n = tanh(round(x.xw(2, u) + hn));
                round(round(round(1.0 - z) * n) + round(z * x.h[u]))
            })
            .collect()
    });
    let dtype = args[0].dtype();
    [y, h].map(|v| Data::from_f64s(dtype, &v))
}

/// `rnn` (see the op table): every step's h (`[S, B, H]`) and the last h (`[B, H]`), rounded
/// as [`lstm`].
pub fn rnn(args: &[&ir::Tensor], reverse: bool) -> [Data; 2] {
    let (y, h) = recurrence(args, reverse, (1, 2), |x, round, _| {
        let (_, tanh) = activations(round);
        (0..x.hidden)
            .map(|u| tanh(round(x.xw(0, u) + x.dot(0, u, x.h))))
            .collect()
    });
    let dtype = args[0].dtype();
    [y, h].map(|v| Data::from_f64s(dtype, &v))
}

fn floats(t: &ir::Tensor) -> Vec<f64> {
    let d = t.data();
    (0..d.len()).map(|j| d.get_f64(j)).collect()
}

type Round = dyn Fn(f64) -> f64;

/// Rounding an f64 result to `dtype`, as a separate op computing in it would.
fn rounding(dtype: DType) -> impl Fn(f64) -> f64 {
    move |x| match dtype {
        DType::F32 => x as f32 as f64,
        DType::F64 => x,
        _ => Data::from_f64s(dtype, &[x]).get_f64(0),
    }
}

/// The interpreter's sigmoid and tanh, rounded by `round`.
fn activations(round: &Round) -> (impl Fn(f64) -> f64 + '_, impl Fn(f64) -> f64 + '_) {
    (
        move |x: f64| round(kernel::routines::math::sigmoid(x)),
        move |x: f64| round(x.tanh()),
    )
}

/// One row at a step: what its cell reads.
struct Row<'a> {
    /// The row's input projection at the step, `[gates·hidden]`.
    xw: &'a [f64],
    rt: &'a [f64],
    /// The row's previous h, `[hidden]`.
    h: &'a [f64],
    round: &'a Round,
    gates: usize,
    hidden: usize,
}

impl Row<'_> {
    /// Gate g's input projection of unit u.
    fn xw(&self, g: usize, u: usize) -> f64 {
        self.xw[g * self.hidden + u]
    }

    /// Gate g's product of unit u with the rows `input` (`[hidden]`), summed in f64 and
    /// rounded.
    fn dot(&self, g: usize, u: usize, input: &[f64]) -> f64 {
        let (j, cols) = (g * self.hidden + u, self.gates * self.hidden);
        (self.round)(
            (0..self.hidden)
                .map(|k| input[k] * self.rt[k * cols + j])
                .sum(),
        )
    }
}

/// Runs the steps of a recurrence of `gates` gates (operands xw and rt first, h0 the operand
/// `h0`), `cell` making a row's new h from what it reads, the rounding and the row's index.
/// Returns every step's h and the last h.
fn recurrence(
    args: &[&ir::Tensor],
    reverse: bool,
    (gates, h0): (usize, usize),
    mut cell: impl FnMut(&Row, &Round, usize) -> Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let dtype = args[0].dtype();
    let round = rounding(dtype);
    let (xw, rt) = (floats(args[0]), floats(args[1]));
    let mut h = floats(args[h0]);
    let (seq, batch, hidden) = (args[0].shape()[0], args[0].shape()[1], args[1].shape()[0]);
    let mut y = vec![0.0; seq * batch * hidden];
    let steps: Vec<usize> = match reverse {
        true => (0..seq).rev().collect(),
        false => (0..seq).collect(),
    };
    for t in steps {
        let mut next = Vec::with_capacity(batch * hidden);
        for b in 0..batch {
            let at = (t * batch + b) * gates * hidden;
            let row = Row {
                xw: &xw[at..at + gates * hidden],
                rt: &rt,
                h: &h[b * hidden..][..hidden],
                round: &round,
                gates,
                hidden,
            };
            next.extend(cell(&row, &round, b));
        }
        y[t * batch * hidden..][..batch * hidden].copy_from_slice(&next);
        h = next;
    }
    (y, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensated_sum_is_exact_for_cancelling_terms() {
        let x = Wide::F(vec![1e16, 1.0, -1e16, 1.0]);
        match reduce(ReduceKind::Sum, &x, &[4], &[0], DType::F64) {
            Wide::F(v) => assert_eq!(v, vec![2.0]),
            _ => panic!("float in, float out"),
        }
        let x = Wide::F(vec![f64::INFINITY, 1.0]);
        match reduce(ReduceKind::Sum, &x, &[2], &[0], DType::F64) {
            Wide::F(v) => assert_eq!(v, vec![f64::INFINITY]),
            _ => panic!("float in, float out"),
        }
    }

    #[test]
    fn arg_and_topk_ties_prefer_lower_index() {
        let x = Wide::F(vec![1.0, 3.0, 3.0, 2.0]);
        assert_eq!(arg_reduce(&x, &[4], 0, true, false), vec![1]);
        assert_eq!(arg_reduce(&x, &[4], 0, true, true), vec![2]);
        assert_eq!(arg_reduce(&x, &[4], 0, false, false), vec![0]);
        let (_, idx) = topk(&x, &[4], 0, 3, true);
        assert_eq!(idx, vec![1, 2, 3]);
    }

    #[test]
    fn gather_checks_range_and_wraps_negatives() {
        let idx = Wide::I(vec![-1, 0]);
        assert_eq!(gather(&[3, 2], &idx, 0).unwrap(), vec![4, 5, 0, 1]);
        let bad = Wide::I(vec![3]);
        assert_eq!(
            gather(&[3, 2], &bad, 0).unwrap_err(),
            "index 3 is out of range for an axis of size 3"
        );
    }

    #[test]
    fn matmul_2x3_by_3x2() {
        let a = Wide::F(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Wide::F(vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let d = DotDims {
            lhs_batch: &[],
            rhs_batch: &[],
            lhs_contract: &[1],
            rhs_contract: &[0],
        };
        match dot(&a, &[2, 3], &b, &[3, 2], &d) {
            Wide::F(v) => assert_eq!(v, vec![58.0, 64.0, 139.0, 154.0]),
            _ => panic!("float in, float out"),
        }
    }
}
