//! Random quantized graphs as importers write them — integer and QDQ products, 4-bit
//! weights, quantized convs, quantize-dequantize pairs around exact sums — for the fuzz of
//! the `quantize` rules and the routines' epilogues.

use kiln::{Builder, DType, Dim, Graph, Op, Rng, Shape, Tensor, Value};

use super::{below, epilogue_steps, pick, random_tensor};

/// A quantized product as importers write it, with random elementwise steps after it: either
/// MatMulInteger's form (u8 activations less a zero point, an int8 weight, i32 sums cast to
/// f32 and scaled) or QDQ's (f32 activations quantized to u8 and dequantized, a weight
/// dequantized per column or per tensor, stored `[k, n]` or `[n, k]`) — what the `quantize`
/// stage turns into `qdot` and the `qgemm` routine computes.
pub fn quantized_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("quant{}", seed % 1000));
    let dynamic = below(rng, 2) == 0;
    // QDQ weights past 64 KiB as f32 stay integers until `quantize` (smaller ones are
    // dequantized at compile time first).
    let (m, mut k, mut n) = (1 + below(rng, 40), 1 + below(rng, 100), 1 + below(rng, 50));
    if !dynamic && below(rng, 2) == 0 {
        (k, n) = (128 + below(rng, 64), 130 + below(rng, 30));
    }
    let batch = below(rng, 2);
    let mut dims: Vec<usize> = (0..batch).map(|_| 1 + below(rng, 3)).collect();
    dims.extend([m, k]);
    let shape = |d: &[usize]| Shape::new(d.iter().map(|&d| Dim::Const(d as i64)).collect());
    let scalar = |b: &mut Builder, v: f64, t: DType| b.scalar(v, t).ok();
    let transposed = below(rng, 2) == 0;
    let w_shape = if transposed { [n, k] } else { [k, n] };
    let w = b.constant(random_tensor(rng, DType::I8, &w_shape)).ok()?;
    let dot = Op::Dot {
        lhs_batch: vec![],
        rhs_batch: vec![],
        lhs_contract: vec![batch as i64 + 1],
        rhs_contract: vec![if transposed { 1 } else { 0 }],
    };
    let y = if dynamic {
        // MatMulInteger: (x - zp) · w in i32, cast, scaled.
        let x = b.param("x", DType::U8, shape(&dims)).ok()?;
        let zp = match below(rng, 2) {
            0 => b.param("zp", DType::U8, Shape::scalar()).ok()?,
            _ => scalar(&mut b, below(rng, 256) as f64, DType::U8)?,
        };
        let xi = b.cast(x, DType::I32).ok()?;
        let zi = b.cast(zp, DType::I32).ok()?;
        let zi = b.broadcast_to(zi, &shape(&dims)).ok()?;
        let a = b.sub(xi, zi).ok()?;
        let wi = b.cast(w, DType::I32).ok()?;
        let d = b.op1(dot, &[a, wi]).ok()?;
        let f = b.cast(d, DType::F32).ok()?;
        let s = scalar(&mut b, 0.001 + below(rng, 100) as f64 / 1000.0, DType::F32)?;
        let fs = b.shape(f).clone();
        let s = b.broadcast_to(s, &fs).ok()?;
        b.mul(f, s).ok()?
    } else {
        // QDQ: x quantized to u8 (clamped, or as its quantizer left it: rounding makes the
        // outputs too unstable to compare, so those are only run) and dequantized (scale
        // sx, zero point zx), w dequantized.
        let sx = scalar(&mut b, 0.01 + below(rng, 10) as f64 / 100.0, DType::F32)?;
        let zx = scalar(&mut b, below(rng, 256) as f64, DType::F32)?;
        let (sxb, zxb) = (
            b.broadcast_to(sx, &shape(&dims)).ok()?,
            b.broadcast_to(zx, &shape(&dims)).ok()?,
        );
        let q = if below(rng, 2) == 0 {
            b.param("x", DType::U8, shape(&dims)).ok()?
        } else {
            let x = b.param("x", DType::F32, shape(&dims)).ok()?;
            let q = b.div(x, sxb).ok()?;
            let q = b.unary(Op::Round, q).ok()?;
            let q = b.add(q, zxb).ok()?;
            let lo = scalar(&mut b, 0.0, DType::F32)?;
            let hi = scalar(&mut b, 255.0, DType::F32)?;
            let (lo, hi) = (
                b.broadcast_to(lo, &shape(&dims)).ok()?,
                b.broadcast_to(hi, &shape(&dims)).ok()?,
            );
            let q = b.op1(Op::Max, &[q, lo]).ok()?;
            let q = b.op1(Op::Min, &[q, hi]).ok()?;
            b.cast(q, DType::U8).ok()?
        };
        let xd = b.cast(q, DType::F32).ok()?;
        let xd = b.sub(xd, zxb).ok()?;
        let xd = b.mul(xd, sxb).ok()?;
        let wf = b.cast(w, DType::F32).ok()?;
        let column = if transposed { 0 } else { 1 };
        let sw = match below(rng, 2) {
            0 => {
                let v: Vec<f32> = (0..n).map(|j| 0.01 + (j % 7) as f32 / 50.0).collect();
                let t = Tensor::from_vec(vec![n], v).ok()?;
                let c = b.constant(t).ok()?;
                b.op1(
                    Op::Broadcast {
                        dims: vec![column],
                        shape: shape(&w_shape),
                    },
                    &[c],
                )
                .ok()?
            }
            _ => {
                let c = scalar(&mut b, 0.02, DType::F32)?;
                b.broadcast_to(c, &shape(&w_shape)).ok()?
            }
        };
        let wd = b.mul(wf, sw).ok()?;
        b.op1(dot, &[xd, wd]).ok()?
    };
    let end = epilogue_steps(&mut b, rng, y, &[n])?;
    b.output("y", end).ok()?;
    b.finish().ok()
}

/// DequantizeLinear's blocked form on 4-bit weights (uint4 or int4, `[K, N]` or `[N, K]`,
/// past 64 KiB as f32 so that `fold` leaves them packed) before a product, as the importer
/// writes it: scales (some negative) and zero points in blocks of 16, 32, 48, 64 or 128 along
/// K — a partial last one sliced off —, per column or per tensor; rows f32, maybe batched.
pub fn int4_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("int4_{}", seed % 1000));
    let (m, k, n) = (
        1 + below(rng, 9),
        128 + below(rng, 200),
        130 + below(rng, 40),
    );
    let batch = below(rng, 2);
    let mut dims: Vec<usize> = (0..batch).map(|_| 1 + below(rng, 3)).collect();
    dims.extend([m, k]);
    let shape = |d: &[usize]| Shape::new(d.iter().map(|&d| Dim::Const(d as i64)).collect());
    let signed = below(rng, 2) == 0;
    let dt = if signed { DType::I4 } else { DType::U4 };
    // K along axis 0 of the weight, or axis 1.
    let kaxis = below(rng, 2);
    let w_shape = if kaxis == 0 { [k, n] } else { [n, k] };
    let w = b.constant(random_tensor(rng, dt, &w_shape)).ok()?;
    // A parameter of `values` per block of `block` along K and column (of dtype `t`), as the
    // importer widens DequantizeLinear's: reshape, broadcast, reshape, slice to K.
    let blocked = |b: &mut Builder, rng: &mut Rng, t: DType, block: usize| -> Option<Value> {
        let nb = k.div_ceil(block);
        let (small, unit, wide) = if kaxis == 0 {
            ([nb, n], [nb, 1, n], [nb, block, n])
        } else {
            ([n, nb], [n, nb, 1], [n, nb, block])
        };
        let c = if t == DType::F32 {
            let v: Vec<f32> = (0..nb * n)
                .map(|_| {
                    (1 + below(rng, 40)) as f32 / 256.0
                        * if below(rng, 4) == 0 { -1.0 } else { 1.0 }
                })
                .collect();
            Tensor::from_vec(small.to_vec(), v).ok()?
        } else {
            random_tensor(rng, t, &small)
        };
        let c = b.constant(c).ok()?;
        let c = b.reshape(c, shape(&unit)).ok()?;
        let c = b.broadcast_to(c, &shape(&wide)).ok()?;
        let merged = if kaxis == 0 {
            [nb * block, n]
        } else {
            [n, nb * block]
        };
        let c = b.reshape(c, shape(&merged)).ok()?;
        let c = if nb * block == k {
            c
        } else {
            b.op1(
                Op::Slice {
                    start: vec![Dim::Const(0); 2],
                    limit: w_shape.iter().map(|&d| Dim::Const(d as i64)).collect(),
                    stride: vec![1, 1],
                },
                &[c],
            )
            .ok()?
        };
        if t == DType::F32 {
            Some(c)
        } else {
            b.cast(c, DType::F32).ok()
        }
    };
    let wf = b.cast(w, DType::F32).ok()?;
    let wd = match below(rng, 4) {
        // Per tensor.
        0 => {
            let s = b.scalar(0.03, DType::F32).ok()?;
            let s = b.broadcast_to(s, &shape(&w_shape)).ok()?;
            b.mul(wf, s).ok()?
        }
        // Per column (a block of all K).
        1 => {
            let s = blocked(&mut b, rng, DType::F32, k)?;
            b.mul(wf, s).ok()?
        }
        _ => {
            let block = pick(rng, &[16usize, 32, 48, 64, 128]);
            let s = blocked(&mut b, rng, DType::F32, block)?;
            let d = if below(rng, 2) == 0 {
                let z = blocked(&mut b, rng, dt, block)?;
                b.sub(wf, z).ok()?
            } else {
                wf
            };
            b.mul(d, s).ok()?
        }
    };
    let x = b.param("x", DType::F32, shape(&dims)).ok()?;
    let dot = Op::Dot {
        lhs_batch: vec![],
        rhs_batch: vec![],
        lhs_contract: vec![batch as i64 + 1],
        rhs_contract: vec![kaxis as i64],
    };
    let y = b.op1(dot, &[x, wd]).ok()?;
    b.output("y", y).ok()?;
    b.finish().ok()
}

/// QDQ's conv as exporters write it: a u8 image dequantized (scale, zero point),
/// filters of 16K values and more (past 64 KiB as f32, so they stay integers until
/// `quantize`: 3×3 or 5×3 taps of 24 to 48 channels into 80 to 96 filters) dequantized per
/// output channel or per tensor, strides, dilations and padding at random, then steps after.
pub fn quantized_conv_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("qconv{}", seed % 1000));
    let (n, c, o) = (1 + below(rng, 2), 24 + below(rng, 25), 80 + below(rng, 17));
    let (kh, kw) = if below(rng, 3) == 0 { (5, 3) } else { (3, 3) };
    let (h, w) = (1 + below(rng, 9), 2 + below(rng, 11));
    let dims = [n, c, h, w];
    let shape = |d: &[usize]| Shape::new(d.iter().map(|&d| Dim::Const(d as i64)).collect());
    let scalar = |b: &mut Builder, v: f64, t: DType| b.scalar(v, t).ok();
    // The image as its quantizer left it (u8: a quantizer's rounding would make the outputs
    // too unstable to compare), dequantized.
    let q = b.param("x", DType::U8, shape(&dims)).ok()?;
    let sx = scalar(&mut b, 0.01 + below(rng, 10) as f64 / 100.0, DType::F32)?;
    let zx = scalar(&mut b, below(rng, 256) as f64, DType::F32)?;
    let (sxb, zxb) = (
        b.broadcast_to(sx, &shape(&dims)).ok()?,
        b.broadcast_to(zx, &shape(&dims)).ok()?,
    );
    let xd = b.cast(q, DType::F32).ok()?;
    let xd = b.sub(xd, zxb).ok()?;
    let xd = b.mul(xd, sxb).ok()?;
    let w_shape = [o, c, kh, kw];
    let wq = b.constant(random_tensor(rng, DType::I8, &w_shape)).ok()?;
    let wf = b.cast(wq, DType::F32).ok()?;
    let sw = match below(rng, 2) {
        0 => {
            let v: Vec<f32> = (0..o).map(|j| 0.001 + (j % 7) as f32 / 500.0).collect();
            let t = Tensor::from_vec(vec![o, 1, 1, 1], v).ok()?;
            let c = b.constant(t).ok()?;
            b.op1(
                Op::Broadcast {
                    dims: vec![0, 1, 2, 3],
                    shape: shape(&w_shape),
                },
                &[c],
            )
            .ok()?
        }
        _ => {
            let c = scalar(&mut b, 0.002, DType::F32)?;
            b.broadcast_to(c, &shape(&w_shape)).ok()?
        }
    };
    let wd = b.mul(wf, sw).ok()?;
    let r = |rng: &mut Rng, n: usize| below(rng, n) as i64;
    let conv = Op::Conv {
        stride: vec![1 + r(rng, 2), 1 + r(rng, 2)],
        dilation: vec![1 + r(rng, 2), 1],
        pad_low: vec![r(rng, 2), r(rng, 2)],
        pad_high: vec![r(rng, 2), r(rng, 2)],
        groups: 1,
    };
    let y = b.op1(conv, &[xd, wd]).ok()?;
    let end = epilogue_steps(&mut b, rng, y, &[1, o, 1, 1])?;
    b.output("y", end).ok()?;
    b.finish().ok()
}

/// Integer sums through QDQ pairs, as a QDQ model's chain between its operators: a u8 matrix
/// or image as f32 by i8 weights or filters as f32 (every sum exact, in any order), then
/// at times a scale per channel (a quantized product's dequantization), a quantize-dequantize
/// pair (u8 or i8, zero point and scale at random, often saturating, the dequantizer's scale
/// at times another or none), at times a scale and shift per channel (a batch norm) and a
/// second pair — which the product's or convolution's epilogue applies, to the interpreter's
/// bits. Whether the epilogue can take every step (not an integer bias first and a batch
/// norm's shift after the pair: one shift) comes with it.
pub fn qdq_pair_graph(seed: u64) -> Option<(Graph, bool)> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("qdqpair{}", seed % 1000));
    let shape = |d: &[usize]| Shape::new(d.iter().map(|&d| Dim::Const(d as i64)).collect());
    // Integer weights as f32, given (an i8 parameter) or constant: a constant divisor after
    // would fold into constant weights, rounding them.
    let weights = |b: &mut Builder, rng: &mut Rng, dims: &[usize]| -> Option<Value> {
        let w = if below(rng, 2) == 0 {
            b.param("w", DType::I8, shape(dims)).ok()?
        } else {
            b.constant(random_tensor(rng, DType::I8, dims)).ok()?
        };
        b.cast(w, DType::F32).ok()
    };
    let (y, per) = if below(rng, 2) == 0 {
        let (c, o, k) = (1 + below(rng, 24), 1 + below(rng, 40), pick(rng, &[1, 3]));
        let (h, w) = (1 + below(rng, 12), 1 + below(rng, 12));
        let x = b.param("x", DType::U8, shape(&[1, c, h, w])).ok()?;
        let xf = b.cast(x, DType::F32).ok()?;
        let wv = weights(&mut b, rng, &[o, c, k, k])?;
        let p = (k / 2) as i64;
        let conv = Op::Conv {
            stride: vec![1, 1],
            dilation: vec![1, 1],
            pad_low: vec![p, p],
            pad_high: vec![p, p],
            groups: 1,
        };
        (b.op1(conv, &[xf, wv]).ok()?, vec![1, o, 1, 1])
    } else {
        let (m, k, n) = (1 + below(rng, 20), 1 + below(rng, 40), 1 + below(rng, 40));
        let x = b.param("x", DType::U8, shape(&[m, k])).ok()?;
        let xf = b.cast(x, DType::F32).ok()?;
        let wv = weights(&mut b, rng, &[k, n])?;
        let dot = Op::Dot {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![1],
            rhs_contract: vec![0],
        };
        (b.op1(dot, &[xf, wv]).ok()?, vec![n])
    };
    let n: usize = per.iter().product();
    let ty = b.ty(y).shape.clone();
    let by = |b: &mut Builder, v: Vec<f32>| -> Option<Value> {
        let c = b.constant(Tensor::from_vec(per.clone(), v).ok()?).ok()?;
        b.broadcast_to(c, &ty).ok()
    };
    let mut y = y;
    let first = below(rng, 3) == 0;
    let biased = first && below(rng, 2) == 0;
    if first {
        if biased {
            // An integer bias before it (QLinearConv's and QGemm's, before their
            // requantizer's scale).
            let t = by(
                &mut b,
                (0..n).map(|_| below(rng, 2001) as f32 - 1000.0).collect(),
            )?;
            y = b.add(y, t).ok()?;
        }
        // A scale per channel first (a quantized product's dequantization).
        let s = by(
            &mut b,
            (0..n)
                .map(|_| 0.25 + below(rng, 100) as f32 / 32.0)
                .collect(),
        )?;
        y = b.mul(y, s).ok()?;
    }
    y = qdq_pair(&mut b, rng, y)?;
    let norm = below(rng, 2) == 0;
    if norm {
        let s = by(
            &mut b,
            (0..n)
                .map(|_| 0.5 + below(rng, 100) as f32 / 64.0)
                .collect(),
        )?;
        let t = by(
            &mut b,
            (0..n)
                .map(|_| below(rng, 100) as f32 / 32.0 - 1.5)
                .collect(),
        )?;
        y = b.mul(y, s).ok()?;
        y = b.add(y, t).ok()?;
    }
    if below(rng, 3) != 0 {
        y = qdq_pair(&mut b, rng, y)?;
    }
    b.output("y", y).ok()?;
    Some((b.finish().ok()?, !(biased && norm)))
}

/// `y` through QuantizeLinear then DequantizeLinear as the importer writes them (u8 or i8,
/// a zero point of 0 without its add and subtraction).
fn qdq_pair(b: &mut Builder, rng: &mut Rng, y: Value) -> Option<Value> {
    let signed = below(rng, 3) == 0;
    let lo = if signed { -128.0 } else { 0.0 };
    let z = if below(rng, 3) == 0 {
        0.0
    } else {
        lo + below(rng, 256) as f64
    };
    // (Not powers of two, which the simplifier multiplies into the steps around: as
    // quantizers' scales, computed from ranges, almost never are.)
    let s = b
        .scalar_like(pick(rng, &[0.37, 11.0, 97.0, 300.0, 1000.0]), y)
        .ok()?;
    let zv = b.scalar_like(z, y).ok()?;
    // At times no division: a QOperator requantizer's `round(y · m)`, its product by m
    // before.
    let q = match below(rng, 4) {
        0 => y,
        _ => b.div(y, s).ok()?,
    };
    let mut q = b.unary(Op::Round, q).ok()?;
    if z != 0.0 {
        q = b.add(q, zv).ok()?;
    }
    let mut q = b.cast(q, if signed { DType::I8 } else { DType::U8 }).ok()?;
    if below(rng, 4) == 0 {
        // Widened through i32 first (QLinearConv's requantized result read as integers).
        q = b.cast(q, DType::I32).ok()?;
    }
    let mut d = b.cast(q, DType::F32).ok()?;
    if z != 0.0 {
        d = b.sub(d, zv).ok()?;
    }
    // The dequantizer's scale: the quantizer's, another, or none (moved into the weights
    // after).
    match below(rng, 4) {
        0 => Some(d),
        1 => {
            let other = b.scalar_like(0.7, d).ok()?;
            b.mul(d, other).ok()
        }
        _ => b.mul(d, s).ok(),
    }
}
