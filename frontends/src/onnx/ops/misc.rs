//! Assorted operators: center crop/pad, window functions, sequence reversal, cache scatter,
//! SwiGLU and Col2Im.

use ir::{DType, Dim, Op, PadMode, Shape, Tensor, TensorType, Value};

use super::{axis, one, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::tensor::require_dtype;
use crate::onnx::value::V;

pub fn center_crop_pad(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let target = ctx.static_ints(n.req(1)?)?;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let axes: Vec<usize> = match n.ints("axes")? {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if axes.len() != target.len() {
        return Err(format!("{} sizes for {} axes", target.len(), axes.len()).into());
    }
    let mut y = x;
    let mut low = vec![0; r];
    let mut high = vec![0; r];
    for (&a, &sh) in axes.iter().zip(&target) {
        let dim = b
            .shape(y)
            .dim(a)
            .as_const()
            .ok_or("CenterCropPad needs static dims")?;
        if sh < dim {
            let start = (dim - sh) / 2;
            y = slice_axis(b, y, a, Dim::Const(start), Dim::Const(start + sh), 1)?;
        } else if sh > dim {
            let d = sh - dim;
            low[a] = d / 2;
            high[a] = d - d / 2;
        }
    }
    if low.iter().chain(&high).any(|&p| p != 0) {
        let zero = b.scalar(0.0, b.dtype(y))?;
        y = b.op1(
            Op::Pad {
                low,
                high,
                mode: PadMode::Constant,
            },
            &[y, zero],
        )?;
    }
    one(ctx, y)
}

/// Hann, Hamming and Blackman windows of a size known at import time.
pub fn window(ctx: &mut Ctx, n: &Node) -> Res {
    let size = *ctx.static_ints(n.req(0)?)?.first().ok_or("empty size")?;
    if !(0..=1 << 24).contains(&size) {
        return Err(format!("window size {size} is out of range").into());
    }
    let periodic = n.int_or("periodic", 1)? != 0;
    let dtype = require_dtype(n.int_or("output_datatype", 1)? as i32)?;
    let denom = if periodic { size } else { size - 1 } as f64;
    let pi = std::f64::consts::PI;
    let values: Vec<f64> = (0..size)
        .map(|i| {
            let i = i as f64;
            match n.op() {
                "HannWindow" => (i * pi / denom).sin().powi(2),
                "HammingWindow" => 25.0 / 46.0 - (i * pi * 2.0 / denom).cos() * (21.0 / 46.0),
                _ => {
                    0.42 - 0.5 * (i * pi * 2.0 / denom).cos() + 0.08 * (i * pi * 4.0 / denom).cos()
                }
            }
        })
        .collect();
    let t = Tensor::new(vec![size as usize], ir::Data::from_f64s(dtype, &values))?;
    Ok(vec![V::data(t)])
}

pub fn reverse_sequence(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let lens = ctx.ir(n.req(1)?)?;
    let b = &mut ctx.b;
    let shape = b.shape(x).clone();
    let r = shape.rank();
    let ba = axis(n.int_or("batch_axis", 1)?, r)?;
    let ta = axis(n.int_or("time_axis", 0)?, r)?;
    // Source time index per element: len-1-t inside the sequence, t past its end.
    let ty = TensorType::new(DType::I64, shape.clone());
    let t = b.op1(
        Op::Iota {
            axis: ta as i64,
            ty,
        },
        &[],
    )?;
    let lens = b.cast(lens, DType::I64)?;
    let l = b.op1(
        Op::Broadcast {
            dims: vec![ba as i64],
            shape: shape.clone(),
        },
        &[lens],
    )?;
    let inside = b.op1(Op::Lt, &[t, l])?;
    let one_v = b.scalar_like(1.0, l)?;
    let last = b.sub(l, one_v)?;
    let rev = b.sub(last, t)?;
    let src = b.op1(Op::Select, &[inside, rev, t])?;
    let tuples = super::shape::element_tuples(ctx, &shape, src, ta)?;
    let y = ctx.b.op1(Op::GatherNd { batch_dims: 0 }, &[x, tuples])?;
    one(ctx, y)
}

pub fn tensor_scatter(ctx: &mut Ctx, n: &Node) -> Res {
    let cache = ctx.ir(n.req(0)?)?;
    let upd = ctx.ir(n.req(1)?)?;
    let wi = n.input(2).map(|w| ctx.ir(w)).transpose()?;
    let circular = match n.string_or("mode", "linear")?.as_str() {
        "linear" => false,
        "circular" => true,
        m => return Err(format!("unknown mode `{m}`").into()),
    };
    let b = &mut ctx.b;
    let cshape = b.shape(cache).clone();
    let ushape = b.shape(upd).clone();
    let r = cshape.rank();
    let a = axis(n.int_or("axis", -2)?, r)?;
    let ty = TensorType::new(DType::I64, ushape.clone());
    let mut pos = b.op1(Op::Iota { axis: a as i64, ty }, &[])?;
    if let Some(w) = wi {
        let w = b.cast(w, DType::I64)?;
        let w = b.op1(
            Op::Broadcast {
                dims: vec![0],
                shape: ushape.clone(),
            },
            &[w],
        )?;
        pos = b.add(pos, w)?;
    }
    if circular {
        let m = b.dim_product(&[cshape.dim(a).clone()], DType::I64)?;
        let m = b.broadcast_to(m, &ushape)?;
        pos = b.op1(Op::Mod, &[pos, m])?;
    }
    let tuples = super::shape::element_tuples(ctx, &cshape, pos, a)?;
    let y = ctx.b.op1(
        Op::ScatterNd {
            reduction: ir::ScatterReduction::None,
        },
        &[cache, tuples, upd],
    )?;
    one(ctx, y)
}

pub fn swiglu(ctx: &mut Ctx, n: &Node) -> Res {
    let a = ctx.ir(n.req(0)?)?;
    let bv = ctx.ir(n.req(1)?)?;
    let alpha = n.float_or("alpha", 1.0)? as f64;
    let b = &mut ctx.b;
    let sa = b.scale(a, alpha)?;
    let sg = b.sigmoid(sa)?;
    let sw = b.mul(a, sg)?;
    let y = b.mul(sw, bv)?;
    one(ctx, y)
}

/// Col2Im: sums the columns of an im2col matrix `[N, C·K, L]` back into the image
/// `[N, C, image...]` (K the block's positions, L the block placements), as one scatter-add of
/// the entries that land inside the image at positions computed at import.
pub fn col2im(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let image = ctx.static_ints(n.req(1)?)?;
    let block = ctx.static_ints(n.req(2)?)?;
    let k = image.len();
    if k == 0 || block.len() != k || image.iter().chain(&block).any(|&d| d <= 0) {
        return Err(format!(
            "image_shape {image:?} and block_shape {block:?} must be positive and of one length"
        )
        .into());
    }
    let dil = n.ints_len("dilations", k, 1)?;
    let strides = n.ints_len("strides", k, 1)?;
    let pads = n.ints_len("pads", 2 * k, 0)?;
    // Placements per axis, then every (block offset, placement) that lands inside.
    let counts: Vec<i64> = (0..k)
        .map(|d| (image[d] + pads[d] + pads[k + d] - dil[d] * (block[d] - 1) - 1) / strides[d] + 1)
        .collect();
    let (kk, ll): (i64, i64) = (block.iter().product(), counts.iter().product());
    let unflat = |mut i: i64, dims: &[i64]| -> Vec<i64> {
        let mut out = vec![0; dims.len()];
        for d in (0..dims.len()).rev() {
            out[d] = i % dims[d];
            i /= dims[d];
        }
        out
    };
    let (mut picks, mut places) = (Vec::new(), Vec::new());
    for kf in 0..kk {
        let ko = unflat(kf, &block);
        for lf in 0..ll {
            let lo = unflat(lf, &counts);
            let mut flat = 0;
            let mut inside = true;
            for d in 0..k {
                let p = lo[d] * strides[d] - pads[d] + ko[d] * dil[d];
                inside &= (0..image[d]).contains(&p);
                flat = flat * image[d] + p;
            }
            if inside {
                picks.push(kf * ll + lf);
                places.push(flat);
            }
        }
    }
    let b = &mut ctx.b;
    let xd = b.shape(x).dims().to_vec();
    if xd.len() != 3 || xd[2].as_const() != Some(ll) {
        return Err(format!(
            "the input must be [N, C·{kk}, {ll}] for these shapes, not {}",
            b.ty(x)
        )
        .into());
    }
    let c = xd[1]
        .exact_div(&Dim::Const(kk))
        .ok_or_else(|| format!("{} channels are not a multiple of the block's {kk}", xd[1]))?;
    let dtype = b.ty(x).dtype;
    // [N, C, K·L] -> [K·L, N, C]; the entries that land, scattered with addition.
    let y = b.reshape(
        x,
        Shape::new(vec![xd[0].clone(), c.clone(), Dim::Const(kk * ll)]),
    )?;
    let y = b.transpose(y, &[2, 0, 1])?;
    let pick = Tensor::from_vec(vec![picks.len()], picks)?;
    let pick = b.constant(pick)?;
    let updates = b.op1(Op::Gather { axis: 0 }, &[y, pick])?;
    let place = Tensor::from_vec(vec![places.len(), 1], places)?;
    let place = b.constant(place)?;
    let total: i64 = image.iter().product();
    let zero = b.scalar(0.0, dtype)?;
    let base = b.broadcast_to(
        zero,
        &Shape::new(vec![Dim::Const(total), xd[0].clone(), c.clone()]),
    )?;
    let sum = b.op1(
        Op::ScatterNd {
            reduction: ir::ScatterReduction::Add,
        },
        &[base, place, updates],
    )?;
    let sum = b.transpose(sum, &[1, 2, 0])?;
    let mut dims = vec![xd[0].clone(), c];
    dims.extend(image.iter().map(|&d| Dim::Const(d)));
    let out = b.reshape(sum, Shape::new(dims))?;
    Ok(vec![ctx.v(out)])
}

/// TfIdfVectorizer over integer tokens: counts each pooled n-gram along the last axis (items
/// `skip + 1` apart, every skip up to `max_skip_count` for n-grams of two or more items,
/// adjacent items for single ones), then weights the counts (TF, IDF, TFIDF). Each n-gram and
/// skip is a few shifted slices compared with constants.
pub fn tfidf_vectorizer(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let mode = n.string_or("mode", "TF")?;
    let min_len = n
        .int("min_gram_length")?
        .ok_or("missing attribute `min_gram_length`")?;
    let max_len = n
        .int("max_gram_length")?
        .ok_or("missing attribute `max_gram_length`")?;
    let max_skip = n
        .int("max_skip_count")?
        .ok_or("missing attribute `max_skip_count`")?;
    let counts = n
        .ints("ngram_counts")?
        .ok_or("missing attribute `ngram_counts`")?;
    let indexes = n
        .ints("ngram_indexes")?
        .ok_or("missing attribute `ngram_indexes`")?;
    let pool = n
        .ints("pool_int64s")?
        .ok_or("only integer pools (pool_int64s) are supported")?;
    let weights = n.floats("weights")?.unwrap_or_default();
    if min_len < 1 || max_len < min_len || max_skip < 0 {
        return Err(
            format!("gram lengths {min_len}..{max_len} and skip {max_skip} are not valid").into(),
        );
    }
    // The pool's n-grams in id order: lengths 1, 2, ... per `ngram_counts`.
    let mut grams: Vec<(Vec<i64>, usize)> = Vec::new();
    let mut id = 0usize;
    for (i, &start) in counts.iter().enumerate() {
        let end = counts.get(i + 1).copied().unwrap_or(pool.len() as i64);
        let len = i + 1;
        let (start, end) = (start.max(0) as usize, (end.max(0) as usize).min(pool.len()));
        for g in pool.get(start..end).unwrap_or_default().chunks(len) {
            if g.len() == len && (min_len..=max_len).contains(&(len as i64)) {
                let out = *indexes
                    .get(id)
                    .ok_or("ngram_indexes has fewer entries than the pool has n-grams")?;
                grams.push((
                    g.to_vec(),
                    usize::try_from(out).map_err(|_| "a negative ngram index")?,
                ));
            }
            id += 1;
        }
    }
    let out_size = indexes.iter().copied().max().unwrap_or(-1) + 1;
    let b = &mut ctx.b;
    let rank = b.rank(x);
    if !(1..=2).contains(&rank) {
        return Err("the input must be [C] or [B, C]".into());
    }
    let x2 = if rank == 1 { b.unsqueeze(x, 0)? } else { x };
    let xd = b.shape(x2).dims().to_vec();
    let c = xd[1]
        .as_const()
        .ok_or("the token axis must be known when the model is imported")?;
    let xi = b.cast(x2, DType::I64)?;
    let zero_col = {
        let z = b.scalar(0.0, DType::F32)?;
        b.broadcast_to(z, &Shape::new(vec![xd[0].clone(), Dim::Const(1)]))?
    };
    let mut cols: Vec<Option<Value>> = vec![None; out_size.max(0) as usize];
    for (g, o) in &grams {
        let l = g.len() as i64;
        let skips = if l == 1 { 0 } else { max_skip };
        for d in 1..=skips + 1 {
            let starts = c - (l - 1) * d;
            if starts <= 0 {
                continue;
            }
            let mut hit: Option<Value> = None;
            for (k, &tok) in g.iter().enumerate() {
                let from = k as i64 * d;
                // Item k of the n-gram starting at every position s: x[s + k·d].
                let part = slice_axis(b, xi, 1, Dim::Const(from), Dim::Const(from + starts), 1)?;
                let t = b.scalar(tok as f64, DType::I64)?;
                let eq = b.elementwise(Op::Eq, &[part, t])?;
                hit = Some(match hit {
                    Some(h) => b.elementwise(Op::And, &[h, eq])?,
                    None => eq,
                });
            }
            let hit = b.cast(hit.expect("n-grams have items"), DType::F32)?;
            let count = b.reduce_sum(hit, &[1], true)?;
            let col = cols.get_mut(*o).ok_or("an ngram index is out of range")?;
            *col = Some(match col.take() {
                Some(prev) => b.add(prev, count)?,
                None => count,
            });
        }
    }
    let mut outs = Vec::with_capacity(cols.len());
    for (o, col) in cols.into_iter().enumerate() {
        let f = col.unwrap_or(zero_col);
        let w = weights.get(o).copied();
        let y = match mode.as_str() {
            "TF" => f,
            "IDF" | "TFIDF" => {
                let v = if mode == "IDF" {
                    let zero = b.scalar(0.0, DType::F32)?;
                    let seen = b.elementwise(Op::Gt, &[f, zero])?;
                    b.cast(seen, DType::F32)?
                } else {
                    f
                };
                match w {
                    Some(w) if !weights.is_empty() => {
                        let w = b.scalar(f64::from(w), DType::F32)?;
                        b.mul(v, w)?
                    }
                    _ => v,
                }
            }
            m => return Err(format!("mode `{m}` is not TF, IDF or TFIDF").into()),
        };
        outs.push(y);
    }
    if outs.is_empty() {
        return Err("the pool has no n-grams".into());
    }
    let mut y = match outs.len() {
        1 => outs[0],
        _ => b.op1(Op::Concat { axis: 1 }, &outs)?,
    };
    if rank == 1 {
        y = b.reshape(y, Shape::new(vec![Dim::Const(out_size)]))?;
    }
    Ok(vec![ctx.v(y)])
}
