//! Spectral ops: DFT (forward, inverse, one-sided and the inverse real transform) and STFT, as
//! contractions with constant cosine and sine matrices along the transformed axis (lengths are
//! known at import). Computed in f64, rounded once to the input's type.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, Shape, Tensor, Value};

use super::{axis, s, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

/// Contracts `x` along `a` with a constant `[rows, cols]` matrix (row-major values), the new
/// axis of `cols` taking `a`'s place.
fn contract(
    b: &mut Builder,
    x: Value,
    a: usize,
    rows: usize,
    cols: usize,
    m: Vec<f64>,
) -> R<Value> {
    let m = Tensor::from_vec(vec![rows, cols], m)?;
    let m = b.constant(m)?;
    let dot = Op::Dot {
        lhs_batch: vec![],
        rhs_batch: vec![],
        lhs_contract: vec![a as i64],
        rhs_contract: vec![0],
    };
    let y = b.op1(dot, &[x, m])?;
    let r = b.rank(y);
    // The result's last axis goes back to `a`.
    let mut perm: Vec<i64> = (0..r as i64 - 1).collect();
    perm.insert(a, r as i64 - 1);
    b.transpose(y, &perm).map_err(s)
}

/// The real and imaginary parts of a signal `[..., 1 | 2]`, without that last axis, in f64,
/// the imaginary part `None` for a real signal.
fn parts(b: &mut Builder, x: Value) -> R<(Value, Option<Value>)> {
    let d = b.shape(x).dims().to_vec();
    let r = d.len();
    let c = d[r - 1]
        .as_const()
        .filter(|c| *c == 1 || *c == 2)
        .ok_or("the last axis of a signal must be 1 (real) or 2 (complex)")?;
    let x = b.cast(x, DType::F64)?;
    let shape = Shape::new(d[..r - 1].to_vec());
    let part = |b: &mut Builder, i: i64| -> R<Value> {
        let p = slice_axis(b, x, r - 1, Dim::Const(i), Dim::Const(i + 1), 1)?;
        b.reshape(p, shape.clone()).map_err(s)
    };
    let re = part(b, 0)?;
    let im = if c == 2 { Some(part(b, 1)?) } else { None };
    Ok((re, im))
}

/// The transform of `x` (a signal `[..., 1 | 2]`) along `a` with `n` points: forward or
/// inverse, `onesided` keeping the first n/2+1 outputs (forward) or reading a one-sided
/// spectrum into a real signal (inverse). Returns `[..., 2]` (`[..., 1]` for the inverse real
/// transform) in `dtype`.
fn dft(
    b: &mut Builder,
    x: Value,
    a: usize,
    n: usize,
    inverse: bool,
    onesided: bool,
    dtype: DType,
) -> R<Value> {
    if n == 0 {
        return Err("the DFT length must be positive".into());
    }
    let (re, im) = parts(b, x)?;
    let len = b
        .shape(re)
        .dim(a)
        .as_const()
        .ok_or("the transformed axis must be known")? as usize;
    let tau = std::f64::consts::TAU;
    let angle = |j: usize, k: usize| tau * ((j * k) % n) as f64 / n as f64;
    let out_parts: Vec<Value> = if inverse && onesided {
        // The Hermitian half-spectrum (n/2+1 bins read) to n real samples.
        let bins = len.min(n / 2 + 1);
        let (re, im) = (
            slice_axis(b, re, a, Dim::Const(0), Dim::Const(bins as i64), 1)?,
            im.map(|v| slice_axis(b, v, a, Dim::Const(0), Dim::Const(bins as i64), 1))
                .transpose()?,
        );
        let weight = |k: usize| {
            if k == 0 || (n.is_multiple_of(2) && k == n / 2) {
                1.0
            } else {
                2.0
            }
        };
        let mr: Vec<f64> = (0..bins)
            .flat_map(|k| (0..n).map(move |t| weight(k) * angle(k, t).cos() / n as f64))
            .collect();
        let mut y = contract(b, re, a, bins, n, mr)?;
        if let Some(im) = im {
            let mi: Vec<f64> = (0..bins)
                .flat_map(|k| (0..n).map(move |t| -weight(k) * angle(k, t).sin() / n as f64))
                .collect();
            let yi = contract(b, im, a, bins, n, mi)?;
            y = b.add(y, yi)?;
        }
        vec![y]
    } else {
        // Only the first min(len, n) samples count (the rest would be zero padding).
        let used = len.min(n);
        let (re, im) = (
            slice_axis(b, re, a, Dim::Const(0), Dim::Const(used as i64), 1)?,
            im.map(|v| slice_axis(b, v, a, Dim::Const(0), Dim::Const(used as i64), 1))
                .transpose()?,
        );
        let m = if onesided && !inverse { n / 2 + 1 } else { n };
        let (sign, scale) = if inverse {
            (1.0, 1.0 / n as f64)
        } else {
            (-1.0, 1.0)
        };
        let cos: Vec<f64> = (0..used)
            .flat_map(|j| (0..m).map(move |k| angle(j, k).cos() * scale))
            .collect();
        let sin: Vec<f64> = (0..used)
            .flat_map(|j| (0..m).map(move |k| sign * angle(j, k).sin() * scale))
            .collect();
        // (re + i·im)(cos + i·sin) = (re·cos − im·sin) + i(re·sin + im·cos).
        let mut yr = contract(b, re, a, used, m, cos.clone())?;
        let mut yi = contract(b, re, a, used, m, sin.clone())?;
        if let Some(im) = im {
            let a1 = contract(b, im, a, used, m, sin)?;
            yr = b.sub(yr, a1)?;
            let a2 = contract(b, im, a, used, m, cos)?;
            yi = b.add(yi, a2)?;
        }
        vec![yr, yi]
    };
    let units: Vec<Value> = out_parts
        .into_iter()
        .map(|v| b.unsqueeze(v, -1).map_err(s))
        .collect::<R<_>>()?;
    let r = b.rank(units[0]) as i64;
    let y = match units.len() {
        1 => units[0],
        _ => b.op1(Op::Concat { axis: r - 1 }, &units)?,
    };
    b.cast(y, dtype).map_err(s)
}

pub fn dft_op(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let rank = ctx.b.rank(x);
    let ax = if n.version >= 20 {
        match n.input(2) {
            Some(a) => *ctx.static_ints(a)?.first().ok_or("empty axis")?,
            None => -2,
        }
    } else {
        n.int_or("axis", 1)?
    };
    let a = axis(ax, rank)?;
    if a + 1 >= rank {
        return Err("the DFT axis cannot be the signal's last (real/imaginary) axis".into());
    }
    let inverse = n.int_or("inverse", 0)? != 0;
    let onesided = n.int_or("onesided", 0)? != 0;
    let len = ctx
        .b
        .shape(x)
        .dim(a)
        .as_const()
        .ok_or("DFT needs the transformed axis known when the model is imported")?;
    let points = match n.input(1) {
        Some(l) => *ctx.static_ints(l)?.first().ok_or("empty dft_length")?,
        None if inverse && onesided => 2 * (len - 1),
        None => len,
    };
    let points = usize::try_from(points).map_err(|_| format!("dft_length {points} is negative"))?;
    let dtype = ctx.b.ty(x).dtype;
    let y = dft(&mut ctx.b, x, a, points, inverse, onesided, dtype)?;
    Ok(vec![ctx.v(y)])
}

pub fn stft(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let dtype = ctx.b.ty(x).dtype;
    let d = ctx.b.shape(x).dims().to_vec();
    if d.len() != 3 {
        return Err("the signal must be [batch, length, 1 or 2]".into());
    }
    let len = d[1]
        .as_const()
        .ok_or("STFT needs the signal length known when the model is imported")?;
    let step = *ctx
        .static_ints(n.req(1)?)?
        .first()
        .ok_or("empty frame_step")?;
    let window = n.input(2).map(|w| ctx.ir(w)).transpose()?;
    if window.is_some_and(|w| ctx.b.rank(w) != 1) {
        return Err("the window must have rank 1".into());
    }
    let frame = match n.input(3) {
        Some(f) => *ctx.static_ints(f)?.first().ok_or("empty frame_length")?,
        None => match window {
            Some(w) => ctx
                .b
                .shape(w)
                .dim(0)
                .as_const()
                .ok_or("the window length must be known")?,
            None => len,
        },
    };
    let onesided = n.int_or("onesided", 1)? != 0;
    if step <= 0 || frame <= 0 || frame > len {
        return Err(format!(
            "frame_step {step} and frame_length {frame} do not fit a signal of {len}"
        )
        .into());
    }
    let win_len = match window {
        Some(w) => ctx
            .b
            .shape(w)
            .dim(0)
            .as_const()
            .ok_or("the window length must be known")?,
        None => frame,
    };
    let frames = 1 + (len - frame) / step;
    // Frame samples past the signal read as zeros: clamp the index and mask.
    let idx: Vec<i64> = (0..frames)
        .flat_map(|f| (0..win_len).map(move |t| (f * step + t).min(len - 1)))
        .collect();
    let inside: Vec<f64> = (0..frames)
        .flat_map(|f| (0..win_len).map(move |t| if f * step + t < len { 1.0 } else { 0.0 }))
        .collect();
    let b = &mut ctx.b;
    let idx = Tensor::from_vec(vec![frames as usize, win_len as usize], idx)?;
    let idx = b.constant(idx)?;
    // [batch, frames, win_len, c]
    let mut f = b.op1(Op::Gather { axis: 1 }, &[x, idx])?;
    let mask = Tensor::from_vec(vec![1, frames as usize, win_len as usize, 1], inside)?;
    let mask = b.constant(mask)?;
    let mask = b.cast(mask, dtype)?;
    f = b.mul(f, mask)?;
    if let Some(w) = window {
        let w = b.reshape(
            w,
            Shape::new(vec![
                Dim::Const(1),
                Dim::Const(1),
                Dim::Const(win_len),
                Dim::Const(1),
            ]),
        )?;
        let w = b.cast(w, dtype)?;
        f = b.mul(f, w)?;
    }
    let y = dft(b, f, 2, frame as usize, false, onesided, dtype)?;
    Ok(vec![ctx.v(y)])
}
