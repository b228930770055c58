//! Attention (opset 23+, with masks, causal and sliding windows, KV cache, GQA, softcap) and
//! rotary position embeddings, decomposed into matmuls, softmax and masks.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, PadMode, Shape, TensorType, Value};

use super::{one, s, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

/// [B, S, H*D] -> [B, H, S, D]
fn split_heads(b: &mut Builder, x: Value, heads: i64) -> R<Value> {
    let d = b.shape(x).dims().to_vec();
    let hd = d[2].floor_div(&Dim::Const(heads))?;
    let y = b.reshape(
        x,
        Shape::new(vec![d[0].clone(), d[1].clone(), Dim::Const(heads), hd]),
    )?;
    b.transpose(y, &[0, 2, 1, 3]).map_err(s)
}

/// A `[q, kv]` i64 grid of `j - i` (key index minus query index).
fn key_minus_query(b: &mut Builder, q: &Dim, kv: &Dim) -> R<Value> {
    let ty = TensorType::new(DType::I64, Shape::new(vec![q.clone(), kv.clone()]));
    let i = b.op1(
        Op::Iota {
            axis: 0,
            ty: ty.clone(),
        },
        &[],
    )?;
    let j = b.op1(Op::Iota { axis: 1, ty }, &[])?;
    b.sub(j, i).map_err(s)
}

/// 0 where `allowed`, -inf elsewhere, in `dtype`.
fn additive(b: &mut Builder, allowed: Value, dtype: DType) -> R<Value> {
    let zero = b.scalar(0.0, dtype)?;
    let ninf = b.scalar(f64::NEG_INFINITY, dtype)?;
    b.select(allowed, zero, ninf).map_err(s)
}

pub fn attention(ctx: &mut Ctx, n: &Node) -> Res {
    let q_in = ctx.ir(n.req(0)?)?;
    let k_in = ctx.ir(n.req(1)?)?;
    let v_in = ctx.ir(n.req(2)?)?;
    let mask = n.input(3).map(|m| ctx.ir(m)).transpose()?;
    let past_k = n.input(4).map(|m| ctx.ir(m)).transpose()?;
    let past_v = n.input(5).map(|m| ctx.ir(m)).transpose()?;
    let nonpad = n.input(6).map(|m| ctx.ir(m)).transpose()?;
    let is_causal = n.int_or("is_causal", 0)? != 0;
    let softcap = n.float_or("softcap", 0.0)? as f64;
    let mode = n.int_or("qk_matmul_output_mode", 0)?;
    let (left_w, right_w) = (
        n.int_or("left_window_size", -1)?,
        n.int_or("right_window_size", -1)?,
    );
    let precision = n.int("softmax_precision")?;
    let b = &mut ctx.b;
    let dtype = b.dtype(q_in);
    let r = super::rank_in(b, q_in, &[3, 4], "Q")?;
    super::rank_in(b, k_in, &[r], "K")?;
    super::rank_in(b, v_in, &[r], "V")?;
    for (p, what) in [(past_k, "past_key"), (past_v, "past_value")] {
        if let Some(p) = p {
            super::rank_in(b, p, &[4], what)?;
        }
    }
    if let Some(np) = nonpad {
        super::rank_in(b, np, &[1], "nonpad_kv_seqlen")?;
    }
    let rank3 = r == 3;
    let (q, k, v) = if rank3 {
        let qh = n.int("q_num_heads")?.ok_or("3-d inputs need q_num_heads")?;
        let kh = n
            .int("kv_num_heads")?
            .ok_or("3-d inputs need kv_num_heads")?;
        (
            split_heads(b, q_in, qh)?,
            split_heads(b, k_in, kh)?,
            split_heads(b, v_in, kh)?,
        )
    } else {
        (q_in, k_in, v_in)
    };
    let head = b
        .shape(q)
        .dim(3)
        .as_const()
        .ok_or("the head size must be static")?;
    let scale = n
        .float("scale")?
        .map(f64::from)
        .unwrap_or(1.0 / (head as f64).sqrt());
    let root = (scale.sqrt() as f32) as f64;
    let (k, v) = match (past_k, past_v) {
        (Some(pk), Some(pv)) => (
            b.op1(Op::Concat { axis: 2 }, &[pk, k])?,
            b.op1(Op::Concat { axis: 2 }, &[pv, v])?,
        ),
        (None, None) => (k, v),
        _ => return Err("past_key and past_value must be given together".into()),
    };
    let (present_k, present_v) = (k, v);
    let qlen = b.shape(q).dim(2).clone();
    let kvlen = b.shape(k).dim(2).clone();
    let past_len = match past_k {
        Some(pk) => b.shape(pk).dim(2).clone(),
        None => Dim::Const(0),
    };
    // The additive bias: masks, causal frontier, sliding window, padding.
    let zeros = b.scalar(0.0, dtype)?;
    let grid = Shape::new(vec![qlen.clone(), kvlen.clone()]);
    let mut bias = b.broadcast_to(zeros, &grid)?;
    let mut mask = mask;
    if let Some(m) = mask {
        // A mask shorter than the keys is padded with "masked".
        let mlen = b.shape(m).dims().last().cloned().unwrap_or(Dim::Const(0));
        let pad = kvlen.sub(&mlen)?;
        if let Some(p) = pad.as_const().filter(|&p| p > 0) {
            let r = b.rank(m);
            let fill = if b.dtype(m) == DType::Bool {
                0.0
            } else {
                f64::NEG_INFINITY
            };
            let fv = b.scalar(fill, b.dtype(m))?;
            let mut high = vec![0; r];
            high[r - 1] = p;
            mask = Some(b.op1(
                Op::Pad {
                    low: vec![0; r],
                    high,
                    mode: PadMode::Constant,
                },
                &[m, fv],
            )?);
        }
    }
    let mask = match mask {
        Some(m) if b.dtype(m) == DType::Bool => Some(additive(b, m, dtype)?),
        m => m,
    };
    if let Some(m) = mask {
        bias = b.add(bias, m)?;
    }
    // Per-batch offsets come from nonpad_kv_seqlen (external cache), else the cache length.
    let offset = match (&nonpad, past_k) {
        (Some(np), None) => {
            let np = b.cast(*np, DType::I64)?;
            let ql = b.dim_product(std::slice::from_ref(&qlen), DType::I64)?;
            let off = b.sub(np, ql)?;
            let nb = b.shape(off).dim(0).clone();
            Some(b.reshape(
                off,
                Shape::new(vec![nb, Dim::Const(1), Dim::Const(1), Dim::Const(1)]),
            )?)
        }
        _ => None,
    };
    let diff = key_minus_query(b, &qlen, &kvlen)?;
    let rel = match offset {
        // j - (i + offset)
        Some(off) => b.sub(diff, off)?,
        None => {
            let p = b.dim_product(std::slice::from_ref(&past_len), DType::I64)?;
            b.sub(diff, p)?
        }
    };
    let zero_i = b.scalar(0.0, DType::I64)?;
    if is_causal {
        let rel_shape = b.shape(rel).clone();
        let z = b.broadcast_to(zero_i, &rel_shape)?;
        let allowed = b.op1(Op::Le, &[rel, z])?;
        let c = additive(b, allowed, dtype)?;
        bias = b.add(bias, c)?;
    }
    if left_w >= 0 || right_w >= 0 {
        let shape = b.shape(rel).clone();
        let t = b.scalar(1.0, DType::Bool)?;
        let mut allowed = b.broadcast_to(t, &shape)?;
        if left_w >= 0 {
            // (i + off) - j <= left  <=>  rel >= -left
            let l = b.scalar(-left_w as f64, DType::I64)?;
            let l = b.broadcast_to(l, &shape)?;
            let ok = b.op1(Op::Ge, &[rel, l])?;
            allowed = b.op1(Op::And, &[allowed, ok])?;
        }
        if right_w >= 0 {
            let r = b.scalar(right_w as f64, DType::I64)?;
            let r = b.broadcast_to(r, &shape)?;
            let ok = b.op1(Op::Le, &[rel, r])?;
            allowed = b.op1(Op::And, &[allowed, ok])?;
        }
        let w = additive(b, allowed, dtype)?;
        bias = b.add(bias, w)?;
    }
    if let Some(np) = nonpad {
        let np = b.cast(np, DType::I64)?;
        let nb = b.shape(np).dim(0).clone();
        let np = b.reshape(np, Shape::new(vec![nb.clone(), Dim::Const(1)]))?;
        let ty = TensorType::new(DType::I64, Shape::new(vec![nb.clone(), kvlen.clone()]));
        let j = b.op1(Op::Iota { axis: 1, ty }, &[])?;
        let j_shape = b.shape(j).clone();
        let np = b.broadcast_to(np, &j_shape)?;
        let keep = b.op1(Op::Lt, &[j, np])?;
        let pm = additive(b, keep, dtype)?;
        let pm = b.reshape(
            pm,
            Shape::new(vec![nb, Dim::Const(1), Dim::Const(1), kvlen.clone()]),
        )?;
        bias = b.add(bias, pm)?;
    }
    // Grouped-query attention: repeat each KV head for its group of query heads.
    let (hq, hk) = (b.shape(q).dim(1).clone(), b.shape(k).dim(1).clone());
    let (k, v) = if hq != hk {
        let (hq, hk) = (
            hq.as_const().ok_or("head counts must be static")?,
            hk.as_const().ok_or("head counts must be static")?,
        );
        if hk == 0 || hq % hk != 0 {
            return Err(format!("{hq} query heads do not group over {hk} key heads").into());
        }
        let rep = |b: &mut Builder, x: Value| -> R<Value> {
            let d = b.shape(x).dims().to_vec();
            let x5 = b.reshape(
                x,
                Shape::new(vec![
                    d[0].clone(),
                    d[1].clone(),
                    Dim::Const(1),
                    d[2].clone(),
                    d[3].clone(),
                ]),
            )?;
            let x5 = b.broadcast_to(
                x5,
                &Shape::new(vec![
                    d[0].clone(),
                    d[1].clone(),
                    Dim::Const(hq / hk),
                    d[2].clone(),
                    d[3].clone(),
                ]),
            )?;
            b.reshape(
                x5,
                Shape::new(vec![
                    d[0].clone(),
                    Dim::Const(hq),
                    d[2].clone(),
                    d[3].clone(),
                ]),
            )
            .map_err(s)
        };
        (rep(b, k)?, rep(b, v)?)
    } else {
        (k, v)
    };
    let qs = b.scale(q, root)?;
    let ks = b.scale(k, root)?;
    let kt = b.transpose_last2(ks)?;
    let mut qk = b.matmul(qs, kt)?;
    if softcap > 0.0 {
        let t = b.scale(qk, 1.0 / softcap)?;
        let t = b.tanh(t)?;
        qk = b.scale(t, softcap)?;
    }
    let with_bias = b.add(qk, bias)?;
    // Softmax that maps fully masked rows to zeros.
    let soft_dtype = match precision {
        Some(p) => crate::onnx::tensor::require_dtype(p as i32)?,
        None => dtype,
    };
    let x = b.cast(with_bias, soft_dtype)?;
    let m = b.reduce_max(x, &[-1], true)?;
    let ninf = b.scalar_like(f64::NEG_INFINITY, m)?;
    let masked_row = b.op1(Op::Eq, &[m, ninf])?;
    let zm = b.scalar_like(0.0, m)?;
    let safe = b.op1(Op::Select, &[masked_row, zm, m])?;
    let e = b.sub(x, safe)?;
    let e = b.exp(e)?;
    let sum = b.reduce_sum(e, &[-1], true)?;
    let zs = b.scalar_like(0.0, sum)?;
    let os = b.scalar_like(1.0, sum)?;
    let empty = b.op1(Op::Eq, &[sum, zs])?;
    let sum = b.op1(Op::Select, &[empty, os, sum])?;
    let p = b.div(e, sum)?;
    let bmax = b.reduce_max(bias, &[-1], true)?;
    let bninf = b.scalar_like(f64::NEG_INFINITY, bmax)?;
    let dead = b.op1(Op::Eq, &[bmax, bninf])?;
    let zp = b.scalar(0.0, soft_dtype)?;
    let p = b.select(dead, zp, p)?;
    let qk_out = match mode {
        2 => with_bias,
        3 => p,
        _ => qk,
    };
    let qk_out = b.cast(qk_out, dtype)?;
    let p = b.cast(p, dtype)?;
    let mut y = b.matmul(p, v)?;
    if rank3 {
        y = b.transpose(y, &[0, 2, 1, 3])?;
        let d = b.shape(y).dims().to_vec();
        let hidden = d[2].mul(&d[3])?;
        y = b.reshape(y, Shape::new(vec![d[0].clone(), d[1].clone(), hidden]))?;
    }
    Ok(vec![
        ctx.v(y),
        ctx.v(present_k),
        ctx.v(present_v),
        ctx.v(qk_out),
    ])
}

pub fn rotary_embedding(ctx: &mut Ctx, n: &Node) -> Res {
    let x_in = ctx.ir(n.req(0)?)?;
    let cos = ctx.ir(n.req(1)?)?;
    let sin = ctx.ir(n.req(2)?)?;
    let pos = n.input(3).map(|p| ctx.ir(p)).transpose()?;
    let interleaved = n.int_or("interleaved", 0)? != 0;
    let rot_dim = n.int_or("rotary_embedding_dim", 0)?;
    let heads = n.int_or("num_heads", 0)?;
    let b = &mut ctx.b;
    super::rank_in(b, x_in, &[3, 4], "input")?;
    let shape_in = b.shape(x_in).clone();
    // To [B, S, H, D].
    let x = if shape_in.rank() == 4 {
        b.transpose(x_in, &[0, 2, 1, 3])?
    } else {
        if heads == 0 {
            return Err("3-d input needs num_heads".into());
        }
        let d = shape_in.dims();
        let hd = d[2].floor_div(&Dim::Const(heads))?;
        b.reshape(
            x_in,
            Shape::new(vec![d[0].clone(), d[1].clone(), Dim::Const(heads), hd]),
        )?
    };
    let head = b
        .shape(x)
        .dim(3)
        .as_const()
        .ok_or("the head size must be static")?;
    let rd = if rot_dim == 0 { head } else { rot_dim };
    let half = rd / 2;
    let (cos, sin) = match pos {
        Some(p) => (
            b.op1(Op::Gather { axis: 0 }, &[cos, p])?,
            b.op1(Op::Gather { axis: 0 }, &[sin, p])?,
        ),
        None => (cos, sin),
    };
    // [B, S, half] -> [B, S, 1, half]
    let unsq = |b: &mut Builder, c: Value| -> R<Value> { b.unsqueeze(c, 2).map_err(s) };
    let (cos, sin) = (unsq(b, cos)?, unsq(b, sin)?);
    let rot = slice_axis(b, x, 3, Dim::Const(0), Dim::Const(rd), 1)?;
    let rest = slice_axis(b, x, 3, Dim::Const(rd), Dim::Const(head), 1)?;
    let (x1, x2) = if interleaved {
        (
            slice_axis(b, rot, 3, Dim::Const(0), Dim::Const(rd), 2)?,
            slice_axis(b, rot, 3, Dim::Const(1), Dim::Const(rd), 2)?,
        )
    } else {
        (
            slice_axis(b, rot, 3, Dim::Const(0), Dim::Const(half), 1)?,
            slice_axis(b, rot, 3, Dim::Const(half), Dim::Const(rd), 1)?,
        )
    };
    let c1 = b.mul(cos, x1)?;
    let s2 = b.mul(sin, x2)?;
    let real = b.sub(c1, s2)?;
    let s1 = b.mul(sin, x1)?;
    let c2 = b.mul(cos, x2)?;
    let imag = b.add(s1, c2)?;
    let rot = if interleaved {
        let r5 = b.unsqueeze(real, -1)?;
        let i5 = b.unsqueeze(imag, -1)?;
        let both = b.op1(Op::Concat { axis: 4 }, &[r5, i5])?;
        let d = b.shape(rot).clone();
        b.reshape(both, d)?
    } else {
        b.op1(Op::Concat { axis: 3 }, &[real, imag])?
    };
    let y = b.op1(Op::Concat { axis: 3 }, &[rot, rest])?;
    let y = if shape_in.rank() == 4 {
        b.transpose(y, &[0, 2, 1, 3])?
    } else {
        b.reshape(y, shape_in)?
    };
    one(ctx, y)
}
