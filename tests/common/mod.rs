//! Shared test support: a generator of random well-typed graphs, driven by a seed.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod onnx;
pub mod quantized;

use std::collections::HashMap;

use kiln::{Builder, DType, Data, Dim, Graph, Op, Rng, Shape, Tensor, Value};

const DTYPES: [DType; 11] = [
    DType::F8E4M3FN,
    DType::I4,
    DType::F4E2M1,
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I32,
    DType::I64,
    DType::U8,
    DType::Bool,
];

fn pick<T: Clone>(rng: &mut Rng, xs: &[T]) -> T {
    xs[(rng.next_u64() % xs.len() as u64) as usize].clone()
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

fn random_dim(rng: &mut Rng) -> Dim {
    match below(rng, 6) {
        0 => Dim::sym("n"),
        1 => Dim::sym("m"),
        2 => Dim::sym("n").mul(&Dim::Const(2)).unwrap(),
        _ => Dim::Const(1 + below(rng, 4) as i64),
    }
}

fn random_shape(rng: &mut Rng) -> Shape {
    let rank = below(rng, 4);
    Shape::new((0..rank).map(|_| random_dim(rng)).collect())
}

/// Tensor data with awkward values mixed in (NaN, infinities, -0.0, extremes).
fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let t = rng.tensor(dtype, shape);
    if dtype.is_float() && t.numel() > 0 && below(rng, 2) == 0 {
        let mut v = t.to_f64_vec();
        let specials = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            1e-30,
            3.5e38,
        ];
        let i = below(rng, v.len());
        v[i] = pick(rng, &specials);
        return Tensor::new(shape.to_vec(), kiln::Data::from_f64s(dtype, &v)).unwrap();
    }
    t
}

fn static_dims(b: &Builder, v: Value) -> Option<Vec<usize>> {
    b.shape(v)
        .as_consts()
        .map(|d| d.iter().map(|&x| x as usize).collect())
}

/// Tries to add one random op over existing values; type errors just mean "try again".
fn random_op(b: &mut Builder, rng: &mut Rng, vals: &[Value]) -> Option<Value> {
    let v = pick(rng, vals);
    let ty = b.ty(v).clone();
    let rank = ty.rank();
    let r = |rng: &mut Rng, n: usize| below(rng, n) as i64;
    let unary = [
        Op::Neg,
        Op::Abs,
        Op::Exp,
        Op::Log,
        Op::Sqrt,
        Op::Tanh,
        Op::Sigmoid,
        Op::Erf,
        Op::Floor,
        Op::Round,
        Op::Not,
        Op::IsNan,
        Op::Sign,
        Op::Recip,
    ];
    let binary = [
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Max,
        Op::Min,
        Op::Pow,
        Op::Rem,
        Op::Mod,
        Op::And,
        Op::Or,
        Op::Xor,
        Op::Eq,
        Op::Lt,
        Op::Ge,
    ];
    let result = match below(rng, 28) {
        0..=3 => b.op1(pick(rng, &unary), &[v]),
        4..=6 => {
            let w = vals
                .iter()
                .copied()
                .filter(|&w| *b.ty(w) == ty)
                .nth(below(rng, 3))
                .unwrap_or(v);
            b.op1(pick(rng, &binary), &[v, w])
        }
        7 => {
            let c = b.op1(Op::Lt, &[v, v]).ok()?;
            b.op1(Op::Select, &[c, v, v])
        }
        8 => b.op1(
            Op::Cast {
                dtype: pick(rng, &DTYPES),
                saturate: below(rng, 2) == 0,
            },
            &[v],
        ),
        9 => {
            let mut perm: Vec<i64> = (0..rank as i64).collect();
            for i in (1..perm.len()).rev() {
                perm.swap(i, below(rng, i + 1));
            }
            b.op1(Op::Transpose { perm }, &[v])
        }
        10 => {
            let numel = ty.shape.numel().ok()?;
            b.op1(
                Op::Reshape {
                    shape: Shape::new(vec![numel]),
                },
                &[v],
            )
        }
        11 => {
            let mut dims = vec![Dim::Const(3)];
            dims.extend(ty.shape.dims().iter().cloned());
            let op = Op::Broadcast {
                dims: (1..=rank as i64).collect(),
                shape: Shape::new(dims),
            };
            b.op1(op, &[v])
        }
        12 => {
            let axes: Vec<i64> = (0..rank as i64).filter(|_| below(rng, 2) == 0).collect();
            let op = match below(rng, 4) {
                0 => Op::ReduceSum { axes },
                1 => Op::ReduceMax { axes },
                2 => Op::ReduceMin { axes },
                _ => Op::ReduceProd { axes },
            };
            b.op1(op, &[v])
        }
        13 if rank > 0 => {
            let axis = r(rng, rank);
            // A value beside itself, or beside another computed value (a concat the
            // runtime may do in place: its operands' kernels writing into its result).
            let signed = ty.dtype.is_float() || ty.dtype.is_signed_int();
            let w = match below(rng, 2) == 0 || !signed {
                true => v,
                false => b.op1(Op::Neg, &[v]).ok()?,
            };
            b.op1(Op::Concat { axis }, &[v, w])
        }
        14 if rank > 0 => {
            let k = (rank - 1) as i64;
            let op = Op::Dot {
                lhs_batch: vec![],
                rhs_batch: vec![],
                lhs_contract: vec![k],
                rhs_contract: vec![k],
            };
            b.op1(op, &[v, v])
        }
        15 => {
            let dims = static_dims(b, v)?;
            let mut start = Vec::new();
            let mut limit = Vec::new();
            let mut stride = Vec::new();
            for &d in &dims {
                let s = below(rng, d + 1) as i64;
                let l = s + below(rng, d + 1 - s as usize) as i64;
                if below(rng, 3) == 0 && d > 0 {
                    // Walk down from the end.
                    start.push(Dim::Const(d as i64 - 1));
                    limit.push(Dim::Const(-1));
                    stride.push(-1 - r(rng, 2));
                } else {
                    start.push(Dim::Const(s));
                    limit.push(Dim::Const(l));
                    stride.push(1 + r(rng, 2));
                }
            }
            b.op1(
                Op::Slice {
                    start,
                    limit,
                    stride,
                },
                &[v],
            )
        }
        16 => {
            let pad = b.constant(random_tensor(rng, ty.dtype, &[])).ok()?;
            let low = (0..rank).map(|_| r(rng, 3)).collect();
            let high = (0..rank).map(|_| r(rng, 3) - 1).collect();
            b.op1(
                Op::Pad {
                    low,
                    high,
                    mode: kiln::PadMode::Constant,
                },
                &[v, pad],
            )
        }
        17 if rank > 0 => {
            let dims = static_dims(b, v)?;
            let axis = below(rng, rank);
            if dims[axis] == 0 {
                return None;
            }
            let k = below(rng, dims[axis] + 1) as i64;
            let outs = b
                .op(
                    Op::TopK {
                        k,
                        axis: axis as i64,
                        largest: below(rng, 2) == 0,
                    },
                    &[v],
                )
                .ok()?;
            return Some(outs[below(rng, 2)]);
        }
        18 if rank > 0 => {
            let axis = below(rng, rank);
            let n = b.shape(v).dim(axis).as_const()?;
            if n == 0 {
                return None;
            }
            let idx: Vec<i64> = (0..3).map(|_| r(rng, 2 * n as usize) - n).collect();
            let idx = b.constant(Tensor::from_vec(vec![3], idx).unwrap()).ok()?;
            b.op1(Op::Gather { axis: axis as i64 }, &[v, idx])
        }
        19 if rank > 0 => {
            let axis = below(rng, rank) as i64;
            let last = below(rng, 2) == 0;
            let op = if below(rng, 2) == 0 {
                Op::ArgMax { axis, last }
            } else {
                Op::ArgMin { axis, last }
            };
            b.op1(op, &[v])
        }
        20 if rank == 3 && ty.dtype.is_float() && below(rng, 2) == 0 => {
            // A 2-D conv of the operand as one image [1, C, H, W]: random window, strides,
            // dilations, padding (more than the window at times) and groups.
            let d = static_dims(b, v)?;
            let (c, h, w) = (d[0], d[1], d[2]);
            let mut shape = vec![Dim::Const(1)];
            shape.extend(ty.shape.dims().iter().cloned());
            let x = b
                .op1(
                    Op::Reshape {
                        shape: Shape::new(shape),
                    },
                    &[v],
                )
                .ok()?;
            if below(rng, 3) == 0 {
                // Pooling the planes: a 2-D window, strides, dilations and padding.
                let op = Op::ReduceWindow {
                    kind: pick(rng, kiln::ReduceKind::ALL),
                    window: vec![1, 1, 1 + r(rng, 3), 1 + r(rng, 3)],
                    stride: vec![1, 1, 1 + r(rng, 3), 1 + r(rng, 3)],
                    dilation: vec![1, 1, 1 + r(rng, 2), 1 + r(rng, 2)],
                    pad_low: vec![0, 0, r(rng, 3), r(rng, 3)],
                    pad_high: vec![0, 0, r(rng, 3), r(rng, 3)],
                };
                return b.op1(op, &[x]).ok();
            }
            let groups = if c > 1 && below(rng, 3) == 0 { c } else { 1 };
            let (kh, kw) = (1 + below(rng, 3), 1 + below(rng, 3));
            let o = groups * (1 + below(rng, 3));
            let wt = random_tensor(rng, ty.dtype, &[o, c / groups, kh, kw]);
            let wt = b.constant(wt).ok()?;
            let dilation = vec![1 + r(rng, 2), 1 + r(rng, 2)];
            let pad_low = vec![r(rng, 3), r(rng, 3)];
            let pad_high = vec![r(rng, 3), r(rng, 3)];
            // Only windows that fit the padded image.
            for (i, (n, k)) in [(h, kh), (w, kw)].into_iter().enumerate() {
                if (k as i64 - 1) * dilation[i] + 1 > n as i64 + pad_low[i] + pad_high[i] {
                    return None;
                }
            }
            let op = Op::Conv {
                stride: vec![1 + r(rng, 3), 1 + r(rng, 3)],
                dilation,
                pad_low,
                pad_high,
                groups: groups as i64,
            };
            let y = b.op1(op, &[x, wt]).ok()?;
            match below(rng, 2) {
                0 => Ok(y),
                _ => Ok(epilogue_steps(b, rng, y, &[1, o, 1, 1]).unwrap_or(y)),
            }
        }
        20 if rank == 3 => {
            let d = static_dims(b, v)?;
            let k = 1 + below(rng, d[2].max(1));
            let groups = if d[1] > 1 && below(rng, 2) == 0 {
                d[1]
            } else {
                1
            };
            let w = random_tensor(rng, ty.dtype, &[2 * groups, d[1] / groups, k]);
            let w = b.constant(w).ok()?;
            let op = Op::Conv {
                stride: vec![1 + r(rng, 2)],
                dilation: vec![1],
                pad_low: vec![r(rng, 2)],
                pad_high: vec![r(rng, 2)],
                groups: groups as i64,
            };
            b.op1(op, &[v, w])
        }
        21 => {
            let d = static_dims(b, v)?;
            let window: Vec<i64> = d.iter().map(|&n| 1 + r(rng, n.max(1))).collect();
            let op = Op::ReduceWindow {
                kind: pick(rng, kiln::ReduceKind::ALL),
                window,
                stride: (0..rank).map(|_| 1 + r(rng, 2)).collect(),
                dilation: vec![1; rank],
                pad_low: (0..rank).map(|_| r(rng, 2)).collect(),
                pad_high: vec![0; rank],
            };
            b.op1(op, &[v])
        }
        22 | 23 if rank > 0 => {
            let d = static_dims(b, v)?;
            if d[0] == 0 {
                return None;
            }
            let idx: Vec<i64> = (0..2).map(|_| r(rng, d[0])).collect();
            let idx = b
                .constant(Tensor::from_vec(vec![2, 1], idx).unwrap())
                .ok()?;
            if below(rng, 2) == 0 {
                b.op1(Op::GatherNd { batch_dims: 0 }, &[v, idx])
            } else {
                let mut ushape = vec![2];
                ushape.extend_from_slice(&d[1..]);
                let u = b.constant(random_tensor(rng, ty.dtype, &ushape)).ok()?;
                let reduction = pick(rng, kiln::ScatterReduction::ALL);
                b.op1(Op::ScatterNd { reduction }, &[v, idx, u])
            }
        }
        27 if rank == 3 && ty.dtype == DType::F32 => {
            // An LSTM layer over `v` as its input projection ([seq, batch, 4·hidden]), or over
            // four copies of it side by side.
            let g = b.shape(v).dim(2).as_const()? as usize;
            let (xw, h) = match g % 4 {
                0 => (v, g / 4),
                _ => (b.op1(Op::Concat { axis: 2 }, &[v, v, v, v]).ok()?, g),
            };
            if h == 0 {
                return None;
            }
            // Recurrent weights of the usual size: large ones saturate every gate.
            let w = random_tensor(rng, ty.dtype, &[h, 4 * h]);
            let w: Vec<f32> = w.as_slice::<f32>()?.iter().map(|x| x * 0.2).collect();
            let rt = b.constant(Tensor::from_vec(vec![h, 4 * h], w).ok()?).ok()?;
            let state = Shape::new(vec![b.shape(v).dim(1).clone(), Dim::Const(h as i64)]);
            let mut states = Vec::new();
            for _ in 0..2 {
                let s = b.constant(random_tensor(rng, ty.dtype, &[1, h])).ok()?;
                states.push(b.broadcast_to(s, &state).ok()?);
            }
            let reverse = below(rng, 2) == 0;
            b.op(Op::Lstm { reverse }, &[xw, rt, states[0], states[1]])
                .map(|outs| outs[below(rng, 3)])
        }
        27 if rank == 2 && ty.dtype.is_float() => {
            // A random forest over the rows of `v` (now and then a feature the rows lack).
            let features = b.shape(v).dim(1).as_const()?;
            let (mut feature, mut threshold, mut rule, mut yes, mut no, mut nan, mut roots) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..1 + below(rng, 3) {
                roots.push(rule.len() as i64);
                // Nodes in breadth-first order: node k's children are the next two free ids.
                let inner = below(rng, 4);
                for k in 0..2 * inner + 1 {
                    let id = rule.len() as i64;
                    if k < inner {
                        let f = if below(rng, 8) == 0 {
                            features
                        } else {
                            r(rng, features.max(1) as usize)
                        };
                        feature.push(f);
                        threshold.push(below(rng, 5) as f64 * 0.5 - 1.0);
                        rule.push(below(rng, 6) as i64);
                        let first = id + (k as i64) + 1;
                        yes.push(first);
                        no.push(first + 1);
                    } else {
                        feature.push(0);
                        threshold.push(0.0);
                        rule.push(6);
                        yes.push(id);
                        no.push(id);
                    }
                    nan.push(below(rng, 2) == 0);
                }
            }
            let n = rule.len();
            let t = |v: Vec<i64>| Tensor::from_vec(vec![v.len()], v).unwrap();
            let th = Tensor::new(vec![n], kiln::Data::from_f64s(ty.dtype, &threshold)).ok()?;
            let tables = [
                b.constant(t(feature)).ok()?,
                b.constant(th).ok()?,
                b.constant(t(rule)).ok()?,
                b.constant(t(yes)).ok()?,
                b.constant(t(no)).ok()?,
                b.constant(Tensor::from_vec(vec![n], nan).unwrap()).ok()?,
                b.constant(t(roots)).ok()?,
            ];
            let mut args = vec![v];
            args.extend(tables);
            b.op1(Op::TreeWalk, &args)
        }
        26 => {
            // A kernel whose body is a few random ops over the operand.
            let mut body = Builder::new("body");
            let p = body.param("in0", ty.dtype, ty.shape.clone()).ok()?;
            let mut inner = vec![p];
            for _ in 0..1 + below(rng, 3) {
                if let Some(x) = random_op(&mut body, rng, &inner) {
                    inner.push(x);
                }
            }
            body.output("out0", *inner.last()?).ok()?;
            let kind = pick(rng, &["", "elementwise", "softmax"]).to_string();
            let body = kiln::ir::Region::new(body.into_graph());
            b.op1(Op::Fused { kind, body }, &[v])
        }
        _ => {
            let dtype = pick(rng, &DTYPES);
            let shape: Vec<usize> = (0..below(rng, 3)).map(|_| 1 + below(rng, 3)).collect();
            match below(rng, 3) {
                0 => b.constant(random_tensor(rng, dtype, &shape)),
                1 if !shape.is_empty() => b.op1(
                    Op::Iota {
                        axis: below(rng, shape.len()) as i64,
                        ty: kiln::TensorType::new(
                            if dtype == DType::Bool {
                                DType::I32
                            } else {
                                dtype
                            },
                            Shape::from_usizes(&shape),
                        ),
                    },
                    &[],
                ),
                _ => b.op1(
                    Op::Dims {
                        values: vec![random_dim(rng), Dim::sym("n").add(&Dim::Const(1)).unwrap()],
                    },
                    &[],
                ),
            }
        }
    };
    result.ok()
}

/// Elementwise steps after `y` (float), 1 to 4 in random order: those a routine applies as
/// it stores (scale and shift per channel — constants of shape `per`, awkward values mixed
/// in — a residual, clamps, a sigmoid, tanh or GELU), in its order or not.
fn epilogue_steps(b: &mut Builder, rng: &mut Rng, y: Value, per: &[usize]) -> Option<Value> {
    let ty = b.ty(y).clone();
    let mut y = y;
    for _ in 0..1 + below(rng, 4) {
        if below(rng, 6) == 0 {
            y = match below(rng, 6) {
                0 => b.unary(Op::Sigmoid, y).ok()?,
                1 => b.unary(Op::Tanh, y).ok()?,
                // HardSwish as Paddle (÷ 6) and Keras (· 1/6) write it.
                k @ (4 | 5) => {
                    let three = b.scalar_like(3.0, y).ok()?;
                    let t = b.add(y, three).ok()?;
                    let zero = b.scalar_like(0.0, t).ok()?;
                    let t = b.op1(Op::Max, &[t, zero]).ok()?;
                    let six = b.scalar_like(6.0, t).ok()?;
                    let t = b.op1(Op::Min, &[t, six]).ok()?;
                    let t = b.mul(y, t).ok()?;
                    match k {
                        4 => b.div(t, six).ok()?,
                        _ => {
                            let sixth = f64::from(kiln::kernel::routines::epilogue::SIXTH);
                            let c = b.scalar_like(sixth, t).ok()?;
                            b.mul(t, c).ok()?
                        }
                    }
                }
                // HardSigmoid and HardSwish as the ONNX importer writes them.
                k => {
                    let sixth = f64::from(kiln::kernel::routines::epilogue::SIXTH);
                    let t = b.scalar_like(sixth, y).ok()?;
                    let t = b.mul(y, t).ok()?;
                    let half = b.scalar_like(0.5, t).ok()?;
                    let t = b.add(t, half).ok()?;
                    let one = b.scalar_like(1.0, t).ok()?;
                    let t = b.op1(Op::Min, &[t, one]).ok()?;
                    let zero = b.scalar_like(0.0, t).ok()?;
                    let t = b.op1(Op::Max, &[t, zero]).ok()?;
                    match k {
                        2 => t,
                        _ => b.mul(y, t).ok()?,
                    }
                }
            };
            continue;
        }
        if below(rng, 8) == 0 {
            // SiLU: y · sigmoid(y), either operand first.
            let sg = b.unary(Op::Sigmoid, y).ok()?;
            y = if below(rng, 2) == 0 {
                b.mul(y, sg).ok()?
            } else {
                b.mul(sg, y).ok()?
            };
            continue;
        }
        if below(rng, 8) == 0 {
            // GELU as exporters write it: y · (erf(y / √2) + 1).
            let r2 = b.scalar_like(f64::from(std::f32::consts::SQRT_2), y).ok()?;
            let d = b.div(y, r2).ok()?;
            let e = b.unary(Op::Erf, d).ok()?;
            let one = b.scalar_like(1.0, e).ok()?;
            let a = b.add(e, one).ok()?;
            y = b.mul(y, a).ok()?;
            continue;
        }
        let other = match below(rng, 6) {
            0 | 1 => {
                let c = random_tensor(rng, ty.dtype, per);
                b.constant(c).ok()?
            }
            2 => {
                let n = b.graph().params().len();
                b.param(&format!("res{n}"), ty.dtype, ty.shape.clone())
                    .ok()?
            }
            3 => {
                // A residual cut from a longer parameter along some axis (a recurrent step's
                // rows of a sequence's projection: laid out as the result from an offset
                // along the first axis, strided along the others).
                let n = b.graph().params().len();
                let dims = ty.shape.dims().to_vec();
                let axis = below(rng, dims.len());
                let (before, after) = (below(rng, 3) as i64, below(rng, 3) as i64);
                let mut long = dims.clone();
                long[axis] = dims[axis].add(&Dim::Const(before + after)).ok()?;
                let p = b
                    .param(&format!("res{n}"), ty.dtype, Shape::new(long.clone()))
                    .ok()?;
                let mut start = vec![Dim::Const(0); dims.len()];
                start[axis] = Dim::Const(before);
                let mut limit = long;
                limit[axis] = dims[axis].add(&Dim::Const(before)).ok()?;
                let stride = vec![1; dims.len()];
                b.op1(
                    Op::Slice {
                        start,
                        limit,
                        stride,
                    },
                    &[p],
                )
                .ok()?
            }
            _ => b.scalar_like(below(rng, 3) as f64 - 1.0, y).ok()?,
        };
        y = match below(rng, 4) {
            0 => b.mul(y, other),
            1 => b.add(other, y),
            2 => b.max(y, other),
            _ => b.min(other, y),
        }
        .ok()?;
    }
    Some(y)
}

/// A 2-D f32 convolution of a random image by random filters (dense, grouped, depthwise or
/// pointwise; strides, dilations, padding), then elementwise steps ([`epilogue_steps`]):
/// its outputs the last step and, at times, an earlier value or a further op.
pub fn conv_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("conv{}", seed % 1000));
    // At times a 3×3 stride-1 conv of 32 to 40 channels and 64 to 72 filters, rows of 24
    // outputs or more: what runs as Winograd's F(2×2, 3×3).
    let wide = below(rng, 12) == 0;
    let (n, c) = match wide {
        true => (1, 32 + below(rng, 9)),
        false => (1 + below(rng, 2), 1 + below(rng, 9)),
    };
    let (h, w) = match wide {
        true => (2 + below(rng, 5), 26 + below(rng, 10)),
        false => (1 + below(rng, 12), 1 + below(rng, 20)),
    };
    let x = b
        .param(
            "x",
            DType::F32,
            Shape::new([n, c, h, w].map(|d| Dim::Const(d as i64)).to_vec()),
        )
        .ok()?;
    // At times filters in blocks of 16, and a second conv after the first's epilogue: what
    // the blocked image layout (`conv_blocked`) takes, dense or depthwise, chained.
    let blocky = !wide && below(rng, 2) == 0;
    let groups = match below(rng, 3) {
        0 if c > 1 && !wide && !blocky => c,
        _ => 1,
    };
    let o = match (wide, blocky) {
        (true, _) => 64 + below(rng, 9),
        (_, true) => 16 * (1 + below(rng, 3)),
        _ => groups * (1 + below(rng, if groups == 1 { 20 } else { 3 })),
    };
    let (kh, kw) = match below(rng, 3) {
        _ if wide => (3, 3),
        0 => (1, 1),
        _ => (1 + below(rng, 3), 1 + below(rng, 3)),
    };
    let wt = random_tensor(rng, DType::F32, &[o, c / groups, kh, kw]);
    let wt = b.constant(wt).ok()?;
    let r = |rng: &mut Rng, n: usize| below(rng, n) as i64;
    let y = b
        .op1(
            Op::Conv {
                stride: match wide {
                    true => vec![1, 1],
                    false => vec![1 + r(rng, 2), 1 + r(rng, 3)],
                },
                dilation: vec![if wide { 1 } else { 1 + r(rng, 2) }, 1],
                pad_low: vec![r(rng, 2), r(rng, 2)],
                pad_high: vec![r(rng, 2), r(rng, 2)],
                groups: groups as i64,
            },
            &[x, wt],
        )
        .ok()?;
    let mut end = epilogue_steps(&mut b, rng, y, &[1, o, 1, 1])?;
    if blocky {
        end = second_conv(&mut b, rng, end, o)?;
    }
    b.output("y", end).ok()?;
    match below(rng, 3) {
        0 => b.output("early", y).ok()?,
        1 => {
            let e = b.exp(end).ok()?;
            b.output("exp", e).ok()?
        }
        _ => {}
    }
    b.finish().ok()
}

/// A conv of `x` (`o` channels, a multiple of 16) by random constant filters — depthwise 3×3,
/// or dense into 16 to 64 (32×64 and more pairs run 3×3 ones by Winograd) or into 9 to 64
/// (the blocked layout pads those that are not a multiple of 16) — strided or padded at
/// random, then mostly a padded value's work ([`padded_tail`]) where the count is not a
/// multiple of 16, else at times `x` added back (a residual, where the shapes agree) or a 2×2
/// max pool.
fn second_conv(b: &mut Builder, rng: &mut Rng, x: Value, o: usize) -> Option<Value> {
    let depthwise = below(rng, 2) == 0;
    let (o2, k) = match depthwise {
        true => (o, 3),
        false if below(rng, 3) > 0 => (9 + below(rng, 56), 1 + 2 * below(rng, 2)),
        false => (16 * (1 + below(rng, 4)), 1 + 2 * below(rng, 2)),
    };
    let wt = random_tensor(rng, DType::F32, &[o2, if depthwise { 1 } else { o }, k, k]);
    let wt = b.constant(wt).ok()?;
    let s = 1 + below(rng, 2) as i64;
    let p = below(rng, 2) as i64;
    let y = b
        .op1(
            Op::Conv {
                stride: vec![s, s],
                dilation: vec![1, 1],
                pad_low: vec![p, p],
                pad_high: vec![p, p],
                groups: if depthwise { o as i64 } else { 1 },
            },
            &[x, wt],
        )
        .ok()?;
    if o2 % 16 != 0 && below(rng, 3) > 0 {
        return padded_tail(b, rng, y, o2);
    }
    match below(rng, 3) {
        0 if b.ty(y) == b.ty(x) => b.add(y, x).ok(),
        1 if b.shape(y).dims()[2..]
            .iter()
            .all(|d| d.as_const() >= Some(2)) =>
        {
            b.op1(
                Op::ReduceWindow {
                    kind: kiln::ir::ReduceKind::Max,
                    window: vec![1, 1, 2, 2],
                    stride: vec![1, 1, 2, 2],
                    dilation: vec![1; 4],
                    pad_low: vec![0; 4],
                    pad_high: vec![0; 4],
                },
                &[y],
            )
            .ok()
        }
        _ => Some(y),
    }
}

/// After a conv into `c` channels (padded in the blocked layout when not a multiple of 16): a
/// sigmoid, a depthwise 3×3 conv, a division by per-channel constants (of magnitude 1/2 to
/// 1), each at random, then a squeeze-excite scale: the image times the sigmoid of its
/// per-channel means (as ONNX's GlobalAveragePool imports), and at times a projection.
fn padded_tail(b: &mut Builder, rng: &mut Rng, y: Value, c: usize) -> Option<Value> {
    let mut y = y;
    if below(rng, 2) == 0 {
        y = b.op1(Op::Sigmoid, &[y]).ok()?;
    }
    if below(rng, 2) == 0 {
        y = same_conv(b, rng, y, (c, 3), c)?;
    }
    let shape = b.shape(y).clone();
    let broadcast = |dims: Vec<i64>| Op::Broadcast {
        dims,
        shape: shape.clone(),
    };
    if below(rng, 2) == 0 {
        let d: Vec<f32> = (0..c)
            .map(|_| (0.5 + below(rng, 100) as f32 / 200.0) * [-1.0, 1.0][below(rng, 2)])
            .collect();
        let d = b.constant(Tensor::new(vec![c], Data::F32(d)).ok()?).ok()?;
        let db = b.op1(broadcast(vec![1]), &[d]).ok()?;
        y = b.op1(Op::Div, &[y, db]).ok()?;
    }
    let dims = shape.dims().to_vec();
    let area = dims[2].as_const()? * dims[3].as_const()?;
    let g = b.op1(Op::ReduceSum { axes: vec![2, 3] }, &[y]).ok()?;
    let one = Dim::Const(1);
    let g4 = Shape::new(vec![dims[0].clone(), dims[1].clone(), one.clone(), one]);
    let g = b.reshape(g, g4.clone()).ok()?;
    let n = b.scalar(area as f64, DType::F32).ok()?;
    let nb = b
        .op1(
            Op::Broadcast {
                dims: vec![],
                shape: g4,
            },
            &[n],
        )
        .ok()?;
    let g = b.op1(Op::Div, &[g, nb]).ok()?;
    let g = b.op1(Op::Sigmoid, &[g]).ok()?;
    let gb = b.op1(broadcast(vec![0, 1, 2, 3]), &[g]).ok()?;
    let y = b.op1(Op::Mul, &[y, gb]).ok()?;
    if below(rng, 3) == 0 {
        return Some(y);
    }
    // A projection (1×1, into 8 to 40 channels) reading the padded image: the padding's
    // channels must not reach its sums.
    let o = 8 + below(rng, 33);
    same_conv(b, rng, y, (o, 1), 1)
}

/// A conv of `x` by random constant filters (`o` of `k`×`k`, `groups` groups) at unit
/// strides, padded to keep the image's size.
fn same_conv(
    b: &mut Builder,
    rng: &mut Rng,
    x: Value,
    (o, k): (usize, usize),
    groups: usize,
) -> Option<Value> {
    let c = b.shape(x).dims()[1].as_const()? as usize;
    let wt = random_tensor(rng, DType::F32, &[o, c / groups, k, k]);
    let wt = b.constant(wt).ok()?;
    let p = (k / 2) as i64;
    let conv = Op::Conv {
        stride: vec![1, 1],
        dilation: vec![1, 1],
        pad_low: vec![p, p],
        pad_high: vec![p, p],
        groups: groups as i64,
    };
    b.op1(conv, &[x, wt]).ok()
}

/// A product of a random f32 matrix (or batch of them) by constant weights, then elementwise
/// steps ([`epilogue_steps`], per column of the result): its outputs the last step and, at
/// times, the product itself.
pub fn dot_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("dot{}", seed % 1000));
    let (m, k, n) = (1 + below(rng, 40), 1 + below(rng, 70), 1 + below(rng, 50));
    let batch = below(rng, 3);
    let mut dims: Vec<usize> = (0..batch).map(|_| 1 + below(rng, 3)).collect();
    dims.extend([m, k]);
    let x = b
        .param(
            "x",
            DType::F32,
            Shape::new(dims.iter().map(|&d| Dim::Const(d as i64)).collect()),
        )
        .ok()?;
    let w = random_tensor(rng, DType::F32, &[k, n]);
    let w = b.constant(w).ok()?;
    let y = b
        .op1(
            Op::Dot {
                lhs_batch: vec![],
                rhs_batch: vec![],
                lhs_contract: vec![batch as i64 + 1],
                rhs_contract: vec![0],
            },
            &[x, w],
        )
        .ok()?;
    let per = if below(rng, 2) == 0 {
        vec![n]
    } else {
        vec![1, n]
    };
    let end = epilogue_steps(&mut b, rng, y, &per)?;
    b.output("y", end).ok()?;
    if below(rng, 3) == 0 {
        b.output("product", y).ok()?;
    }
    b.finish().ok()
}

/// A recurrent layer (`lstm`, `gru`, `rnn`) over a random input projection — sequences of 0 to 5
/// steps (now and then of symbolic length), 1 to 6 rows, 1 to 160 hidden units (blocks of 16
/// and tails; enough work at times for the routine to split the units over threads), either
/// direction — with constant or parameter weights, and a step after one of its results.
pub fn recurrent_graph(seed: u64) -> Option<Graph> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let mut b = Builder::new(&format!("lstm{}", seed % 1000));
    let seq = match below(rng, 4) {
        0 => Dim::sym("s"),
        _ => Dim::Const(below(rng, 6) as i64),
    };
    let batch = 1 + below(rng, 6);
    let hidden = match below(rng, 3) {
        0 => 1 + below(rng, 20),
        1 => 16 * (1 + below(rng, 4)),
        _ => 60 + below(rng, 101),
    };
    let dim = |n: usize| Dim::Const(n as i64);
    let gates = pick(rng, &[4, 3, 1]);
    let cols = dim(gates * hidden);
    let xw = b
        .param(
            "xw",
            DType::F32,
            Shape::new(vec![seq, dim(batch), cols.clone()]),
        )
        .ok()?;
    // Recurrent weights of the usual size (large ones saturate every gate).
    let w = random_tensor(rng, DType::F32, &[hidden, gates * hidden]);
    let scale = 1.0 / (hidden as f32).sqrt();
    let w: Vec<f32> = w.as_slice::<f32>()?.iter().map(|x| x * scale).collect();
    let w = Tensor::from_vec(vec![hidden, gates * hidden], w).ok()?;
    let rt = match below(rng, 3) {
        0 => b
            .param("rt", DType::F32, Shape::new(vec![dim(hidden), cols]))
            .ok()?,
        _ => b.constant(w).ok()?,
    };
    let state = Shape::new(vec![dim(batch), dim(hidden)]);
    let h0 = b.param("h0", DType::F32, state.clone()).ok()?;
    let reverse = below(rng, 2) == 0;
    let outs = if gates == 4 {
        let c0 = b.param("c0", DType::F32, state).ok()?;
        b.op(Op::Lstm { reverse }, &[xw, rt, h0, c0]).ok()?
    } else if gates == 1 {
        b.op(Op::Rnn { reverse }, &[xw, rt, h0]).ok()?
    } else {
        let rbn = b
            .param("rbn", DType::F32, Shape::new(vec![dim(hidden)]))
            .ok()?;
        let linear_before_reset = below(rng, 2) == 0;
        let op = Op::Gru {
            reverse,
            linear_before_reset,
        };
        b.op(op, &[xw, rt, rbn, h0]).ok()?
    };
    for (name, &v) in ["y", "h", "c"].iter().zip(&outs) {
        b.output(name, v).ok()?;
    }
    let t = b.op1(Op::Tanh, &[outs[below(rng, outs.len())]]).ok()?;
    b.output("t", t).ok()?;
    b.finish().ok()
}

/// A random well-typed graph with `size` attempted ops.
pub fn random_graph(seed: u64, size: usize) -> Graph {
    let mut rng = Rng::new(seed);
    let mut b = Builder::new(&format!("g{}", seed % 1000));
    let mut vals = Vec::new();
    for i in 0..1 + below(&mut rng, 3) {
        let dtype = pick(&mut rng, &DTYPES);
        let shape = random_shape(&mut rng);
        vals.push(b.param(&format!("p{i}"), dtype, shape).unwrap());
    }
    for _ in 0..size {
        if let Some(v) = random_op(&mut b, &mut rng, &vals) {
            vals.push(v);
        }
    }
    for i in 0..1 + below(&mut rng, 3) {
        let v = pick(&mut rng, &vals);
        b.output(&format!("y{i}"), v).unwrap();
    }
    b.finish().expect("the builder only adds well-typed nodes")
}

/// Proptest case count: `PROPTEST_CASES` when set (for long fuzzing runs), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The shared material (`../shared`, or `KILN_SHARED`), or why it is not there.
#[allow(dead_code)]
pub fn shared_dir(what: &str) -> Result<std::path::PathBuf, String> {
    let root = std::env::var_os("KILN_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = root.join(what);
    match dir.is_dir() {
        true => Ok(dir),
        false => Err(format!(
            "{} is missing (set KILN_SHARED to the shared folder)",
            dir.display()
        )),
    }
}

/// The shared material, or `None` (for suites that only take extra seeds from it).
#[allow(dead_code)]
pub fn shared(what: &str) -> Option<std::path::PathBuf> {
    shared_dir(what).ok()
}

/// A test of a suite that needs something it may not find (`needs` is `Err(why)` then): such a
/// test shows as ignored, marked `[SKIPPED: why]`, in the summary `cargo test` prints, never as
/// passed. For the test files with their own harness (`harness = false`).
#[allow(dead_code)]
pub fn trial<T: Send + 'static>(
    name: impl Into<String>,
    needs: Result<T, String>,
    run: impl FnOnce(T) + Send + 'static,
) -> libtest_mimic::Trial {
    match needs {
        Ok(v) => libtest_mimic::Trial::test(name, move || {
            run(v);
            Ok(())
        }),
        Err(why) => {
            let kind = format!("SKIPPED: {why}");
            libtest_mimic::Trial::test(name, move || Err(why.into()))
                .with_ignored_flag(true)
                .with_kind(kind)
        }
    }
}

/// Runs `trials` as `cargo test` runs tests (filters, `--list`, `--ignored`, the summary).
/// Asked to run ignored tests too (`--ignored`, `--include-ignored`), it leaves out the skipped
/// ones, saying so: they cannot run, and running them would neither pass nor fail honestly.
#[allow(dead_code)]
pub fn run_trials(mut trials: Vec<libtest_mimic::Trial>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    if args.ignored || args.include_ignored {
        trials.retain(|t| {
            let skipped = t.kind().starts_with("SKIPPED");
            if skipped {
                eprintln!("not running {} [{}]", t.name(), t.kind());
            }
            !skipped
        });
    }
    libtest_mimic::run(&args, trials).exit()
}

/// Whether an op turns a one-ulp difference of float operands into an arbitrary difference:
/// rounding to integers, remainders, comparisons, float-to-integer casts, arg-reductions, and
/// in 16-bit floats (whose rounding error is 2^-8) the ops with unbounded derivatives.
pub fn unstable(g: &Graph, op: &Op, inputs: &[Value]) -> bool {
    let float_in = inputs.iter().any(|&v| g.value_type(v).dtype.is_float());
    let coarse = inputs.iter().any(|&v| {
        let d = g.value_type(v).dtype;
        d.is_float() && !matches!(d, kiln::DType::F32 | kiln::DType::F64)
    });
    float_in
        && match op {
            Op::Floor | Op::Ceil | Op::Round | Op::Sign | Op::Rem | Op::Mod => true,
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => true,
            Op::ArgMax { .. } | Op::ArgMin { .. } | Op::TopK { .. } => true,
            Op::Cast { dtype, .. } => !dtype.is_float(),
            Op::Div | Op::Recip | Op::Rsqrt | Op::Sqrt | Op::Log | Op::Pow => coarse,
            Op::Tan | Op::Asin | Op::Acos | Op::Acosh | Op::Atanh => coarse,
            Op::Fused { body, .. } => {
                let b = body.graph();
                b.node_ids()
                    .into_iter()
                    .any(|id| unstable(b, b.node(id).op(), b.node(id).inputs()))
            }
            _ => false,
        }
}

/// Outputs of `g` whose value depends on no unstable op: there, rewrites that round
/// differently may only differ by rounding.
pub fn continuous_outputs(g: &Graph) -> Vec<bool> {
    let mut memo: HashMap<kiln::ir::NodeId, bool> = HashMap::new();
    for id in g.topo_order().expect("acyclic") {
        let n = g.node(id);
        let bad = unstable(g, n.op(), n.inputs()) || n.inputs().iter().any(|v| !memo[&v.node]);
        memo.insert(id, !bad);
    }
    g.outputs().iter().map(|(_, v)| memo[&v.node]).collect()
}

/// The tolerance the optimizer's rewrites need: that of the least precise float dtype.
pub fn float_eps(g: &Graph) -> f64 {
    g.node_ids()
        .into_iter()
        .flat_map(|id| g.node(id).types().to_vec())
        .map(|t| match t.dtype {
            kiln::DType::F64 | kiln::DType::F32 => 1e-3,
            kiln::DType::F16 | kiln::DType::BF16 => 3e-2,
            d if d.is_float() => 0.3,
            _ => 1e-3,
        })
        .fold(1e-3, f64::max)
}
