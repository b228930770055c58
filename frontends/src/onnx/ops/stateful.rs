//! The stateful layers of recurrent LLM blocks (opset 27): CausalConvWithState (a causal
//! depthwise 1-D conv carrying its last k-1 inputs, Mamba and Gated DeltaNet) and
//! LinearAttention (the linear, gated, delta and gated-delta recurrences, unrolled over the
//! known number of tokens). 16-bit inputs compute in f32 and round once at the end.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, Shape, Value};

use super::{s, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

/// f32 for 16-bit floats (computed wide, rounded at the end), else the dtype itself.
fn wide(b: &mut Builder, x: Value) -> R<Value> {
    match b.ty(x).dtype {
        DType::F16 | DType::BF16 => b.cast(x, DType::F32).map_err(s),
        _ => Ok(x),
    }
}

fn dims(b: &Builder, x: Value) -> Vec<Dim> {
    b.shape(x).dims().to_vec()
}

fn fail_activation(a: &str) -> String {
    format!("activation `{a}` is not one of silu, swish, none")
}

pub fn causal_conv_with_state(ctx: &mut Ctx, n: &Node) -> Res {
    let x_in = ctx.ir(n.req(0)?)?;
    let dtype = ctx.b.ty(x_in).dtype;
    let w = ctx.ir(n.req(1)?)?;
    let bias = n.input(2).map(|v| ctx.ir(v)).transpose()?;
    let past = n.input(3).map(|v| ctx.ir(v)).transpose()?;
    let act = n.string_or("activation", "none")?;
    if !matches!(act.as_str(), "silu" | "swish" | "none") {
        return Err(fail_activation(&act).into());
    }
    let b = &mut ctx.b;
    let (xd, wd) = (dims(b, x_in), dims(b, w));
    if xd.len() != 3 || wd.len() != 3 {
        return Err("input and weight must have rank 3".into());
    }
    let k = wd[2].as_const().ok_or("the kernel size must be known")?;
    if k < 1 {
        return Err("the kernel size must be at least 1".into());
    }
    let x = wide(b, x_in)?;
    let w = wide(b, w)?;
    let ft = b.ty(x).dtype;
    let state_shape = Shape::new(vec![xd[0].clone(), xd[1].clone(), Dim::Const(k - 1)]);
    let past = match past {
        Some(p) => wide(b, p)?,
        None => {
            let z = b.scalar(0.0, ft)?;
            b.broadcast_to(z, &state_shape)?
        }
    };
    let padded = b.op1(Op::Concat { axis: 2 }, &[past, x])?;
    let groups = xd[1].as_const().ok_or("the channel count must be known")?;
    let conv = Op::Conv {
        stride: vec![1],
        dilation: vec![1],
        pad_low: vec![0],
        pad_high: vec![0],
        groups,
    };
    let mut y = b.op1(conv, &[padded, w])?;
    if let Some(bias) = bias {
        let bias = wide(b, bias)?;
        let bias = b.reshape(bias, Shape::new(vec![xd[1].clone(), Dim::Const(1)]))?;
        y = b.add(y, bias)?;
    }
    if act != "none" {
        y = b.silu(y)?;
    }
    let len = dims(b, padded)[2].clone();
    let start = len.sub(&Dim::Const(k - 1))?;
    let present = slice_axis(b, padded, 2, start, len, 1)?;
    let (y, present) = (b.cast(y, dtype)?, b.cast(present, dtype)?);
    Ok(vec![ctx.v(y), ctx.v(present)])
}

/// [B, T, H*D] -> [B, T, H, D]
fn heads(b: &mut Builder, x: Value, h: i64) -> R<Value> {
    let d = dims(b, x);
    let hd = d[2]
        .exact_div(&Dim::Const(h))
        .ok_or_else(|| format!("a packed dim {} is not a multiple of {h} heads", d[2]))?;
    b.reshape(
        x,
        Shape::new(vec![d[0].clone(), d[1].clone(), Dim::Const(h), hd]),
    )
    .map_err(s)
}

/// Token `t` of a [B, T, ...] value: [B, ...].
fn token(b: &mut Builder, x: Value, t: i64) -> R<Value> {
    let y = slice_axis(b, x, 1, Dim::Const(t), Dim::Const(t + 1), 1)?;
    let mut d = dims(b, y);
    d.remove(1);
    b.reshape(y, Shape::new(d)).map_err(s)
}

/// A per-head gate of [B, T, H] or [B, T, 1] (one per head or shared), or [B, T, H*dk] when
/// `per_key` allows it, as [B, T, H, dk or 1, 1] ready to scale a [B, H, dk, dv] state.
fn gate(b: &mut Builder, g: Value, h: i64, dk: &Dim, per_key: bool) -> R<Value> {
    let d = dims(b, g);
    if d.len() != 3 {
        return Err("a decay or beta input must have rank 3".into());
    }
    let last = d[2].as_const();
    let inner = if per_key && last != Some(h) && last != Some(1) {
        dk.clone()
    } else {
        Dim::Const(1)
    };
    let hh = if last == Some(1) { 1 } else { h };
    b.reshape(
        g,
        Shape::new(vec![
            d[0].clone(),
            d[1].clone(),
            Dim::Const(hh),
            inner,
            Dim::Const(1),
        ]),
    )
    .map_err(s)
}

pub fn linear_attention(ctx: &mut Ctx, n: &Node) -> Res {
    let q_in = ctx.ir(n.req(0)?)?;
    let dtype = ctx.b.ty(q_in).dtype;
    let (k_in, v_in) = (ctx.ir(n.req(1)?)?, ctx.ir(n.req(2)?)?);
    let past = n.input(3).map(|v| ctx.ir(v)).transpose()?;
    let decay = n.input(4).map(|v| ctx.ir(v)).transpose()?;
    let beta = n.input(5).map(|v| ctx.ir(v)).transpose()?;
    let hq = n
        .int("q_num_heads")?
        .ok_or("missing attribute `q_num_heads`")?;
    let hkv = n
        .int("kv_num_heads")?
        .ok_or("missing attribute `kv_num_heads`")?;
    if hkv <= 0 || hq <= 0 || hq % hkv != 0 {
        return Err(
            format!("q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}").into(),
        );
    }
    let rule = n.string_or("update_rule", "gated_delta")?;
    let (gated, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        r => return Err(format!("update_rule `{r}` is not known").into()),
    };
    if gated && decay.is_none() {
        return Err(format!("update_rule `{rule}` needs the decay input").into());
    }
    if delta && beta.is_none() {
        return Err(format!("update_rule `{rule}` needs the beta input").into());
    }
    let b = &mut ctx.b;
    for (what, v, rank) in [("query", q_in, 3), ("key", k_in, 3), ("value", v_in, 3)]
        .into_iter()
        .chain(past.map(|p| ("past_state", p, 4)))
    {
        if b.rank(v) != rank {
            return Err(format!("{what} must have rank {rank}, not {}", b.rank(v)).into());
        }
    }
    let q = wide(b, q_in)?;
    let (k, v) = (wide(b, k_in)?, wide(b, v_in)?);
    let ft = b.ty(q).dtype;
    let (q, k, v) = (heads(b, q, hq)?, heads(b, k, hkv)?, heads(b, v, hkv)?);
    let (qd, kd, vd) = (dims(b, q), dims(b, k), dims(b, v));
    let (batch, dk, dv) = (qd[0].clone(), qd[3].clone(), vd[3].clone());
    if kd[3] != dk {
        return Err(format!("query and key head sizes differ: {} and {}", dk, kd[3]).into());
    }
    let steps = qd[1]
        .as_const()
        .ok_or("LinearAttention needs the number of tokens known when the model is imported")?;
    let explicit = n.float_or("scale", 0.0)? as f64;
    let scale = if explicit != 0.0 {
        explicit
    } else {
        let d = dk.as_const().ok_or("the head size must be known")?;
        1.0 / (d as f64).sqrt()
    };
    let state_shape = Shape::new(vec![batch.clone(), Dim::Const(hkv), dk.clone(), dv.clone()]);
    let mut state = match past {
        Some(p) => wide(b, p)?,
        None => {
            let z = b.scalar(0.0, ft)?;
            b.broadcast_to(z, &state_shape)?
        }
    };
    let decay = match decay {
        Some(g) => {
            let g = wide(b, g)?;
            let g = gate(b, g, hkv, &dk, true)?;
            Some(b.exp(g)?)
        }
        None => None,
    };
    let beta = match beta {
        Some(x) => {
            let x = wide(b, x)?;
            Some(gate(b, x, hkv, &dk, false)?)
        }
        None => None,
    };
    let group = hq / hkv;
    let scale = b.scalar(scale, ft)?;
    let mut outs = Vec::with_capacity(steps as usize);
    for t in 0..steps {
        // k_t, v_t: [B, H, dk, 1] and [B, H, 1, dv].
        let kt = token(b, k, t)?;
        let kt = b.unsqueeze(kt, -1)?;
        let vt = token(b, v, t)?;
        let vt = b.unsqueeze(vt, 2)?;
        if let Some(g) = decay {
            let gt = token(b, g, t)?;
            let gt = b.broadcast_to(gt, &state_shape)?;
            state = b.mul(state, gt)?;
        }
        let update = match beta {
            Some(beta) => {
                // v - Sᵀk: [B, H, 1, dv].
                let sk = b.mul(state, kt)?;
                let sk = b.reduce_sum(sk, &[2], true)?;
                let diff = b.sub(vt, sk)?;
                let bt = token(b, beta, t)?;
                let outer = b.mul(kt, diff)?;
                let bt = b.broadcast_to(bt, &state_shape)?;
                b.mul(outer, bt)?
            }
            None => b.mul(kt, vt)?,
        };
        state = b.add(state, update)?;
        // o_t = scale · qᵀS per query head, query heads grouped over their KV head.
        let qt = token(b, q, t)?;
        let qt = b.reshape(
            qt,
            Shape::new(vec![
                batch.clone(),
                Dim::Const(hkv),
                Dim::Const(group),
                dk.clone(),
            ]),
        )?;
        let o = b.matmul(qt, state)?;
        let o = b.mul(o, scale)?;
        let o = b.reshape(
            o,
            Shape::new(vec![batch.clone(), Dim::Const(1), Dim::Const(hq).mul(&dv)?]),
        )?;
        outs.push(o);
    }
    let y = match outs.len() {
        1 => outs[0],
        _ => b.op1(Op::Concat { axis: 1 }, &outs)?,
    };
    let (y, state) = (b.cast(y, dtype)?, b.cast(state, dtype)?);
    Ok(vec![ctx.v(y), ctx.v(state)])
}
