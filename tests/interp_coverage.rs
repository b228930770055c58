//! The interpreter runs every op on every dtype the op's type rule accepts: each op of the table
//! is instantiated for all thirteen dtypes, and every instance the verifier accepts must run
//! on random data (integer division by zero being the one legitimate run-time error).

use kiln::{
    Builder, DType, Dim, Op, PadMode, ReduceKind, Rng, ScatterReduction, Shape, Tensor, TensorType,
};

/// One instance of each op over operands of `dtype` (shape [2, 3] where it matters).
fn instances(dtype: DType) -> Vec<(Op, Vec<Tensor>)> {
    let mut rng = Rng::new(dtype as u64);
    let x = rng.tensor(dtype, &[2, 3]);
    let y = rng.tensor(dtype, &[2, 3]);
    let cond = rng.tensor(DType::Bool, &[2, 3]);
    let scalar = rng.tensor(dtype, &[]);
    let idx = Tensor::from_vec(vec![2], vec![2i64, -1]).unwrap();
    let nd = Tensor::from_vec(vec![2, 1], vec![1i32, 0]).unwrap();
    let upd = rng.tensor(dtype, &[2, 3]);
    let img = rng.tensor(dtype, &[1, 2, 4]);
    let ker = rng.tensor(dtype, &[2, 1, 3]);
    let ty = TensorType::new(dtype, Shape::from_consts(&[2, 3]));
    let mut out: Vec<(Op, Vec<Tensor>)> = Vec::new();
    for m in Op::MNEMONICS {
        let op = match *m {
            "param" | "constant" | "dims" => continue,
            "iota" => Op::Iota {
                axis: 1,
                ty: ty.clone(),
            },
            "select" => {
                out.push((Op::Select, vec![cond.clone(), x.clone(), y.clone()]));
                continue;
            }
            "bitcast" => {
                for to in DType::ALL {
                    if to.bits() == dtype.bits() {
                        out.push((Op::Bitcast { dtype: to }, vec![x.clone()]));
                    }
                }
                continue;
            }
            "cast" => {
                for to in DType::ALL {
                    out.push((
                        Op::Cast {
                            dtype: to,
                            saturate: true,
                        },
                        vec![x.clone()],
                    ));
                    out.push((
                        Op::Cast {
                            dtype: to,
                            saturate: false,
                        },
                        vec![x.clone()],
                    ));
                }
                continue;
            }
            "reshape" => Op::Reshape {
                shape: Shape::from_consts(&[3, 2]),
            },
            "refine" => Op::Refine {
                shape: Shape::from_consts(&[2, 3]),
            },
            "transpose" => Op::Transpose { perm: vec![1, 0] },
            "broadcast" => Op::Broadcast {
                dims: vec![1, 2],
                shape: Shape::from_consts(&[2, 2, 3]),
            },
            "slice" => Op::Slice {
                start: vec![Dim::Const(1), Dim::Const(2)],
                limit: vec![Dim::Const(2), Dim::Const(-1)],
                stride: vec![1, -2],
            },
            "pad" => {
                for mode in PadMode::ALL {
                    let op = Op::Pad {
                        low: vec![1, 1],
                        high: vec![0, 2],
                        mode: *mode,
                    };
                    out.push((op, vec![x.clone(), scalar.clone()]));
                }
                continue;
            }
            "concat" => {
                out.push((Op::Concat { axis: 0 }, vec![x.clone(), y.clone()]));
                continue;
            }
            "gather" => {
                out.push((Op::Gather { axis: 1 }, vec![x.clone(), idx.clone()]));
                continue;
            }
            "resample" => {
                // x [2, 3] to 4 positions of 2 taps along axis 1.
                let taps = Tensor::from_vec(vec![4, 2], vec![0i64, 1, 2, 2, 1, 0, 0, 2]).unwrap();
                let op = Op::Resample { axis: 1 };
                out.push((op, vec![x.clone(), taps, rng.tensor(dtype, &[4, 2])]));
                continue;
            }
            "gather_nd" => {
                out.push((Op::GatherNd { batch_dims: 0 }, vec![x.clone(), nd.clone()]));
                continue;
            }
            "scatter_nd" => {
                for r in ScatterReduction::ALL {
                    let op = Op::ScatterNd { reduction: *r };
                    out.push((op, vec![x.clone(), nd.clone(), upd.clone()]));
                }
                continue;
            }
            "reduce_sum" => Op::ReduceSum { axes: vec![1] },
            "reduce_prod" => Op::ReduceProd { axes: vec![0, 1] },
            "reduce_max" => Op::ReduceMax { axes: vec![0] },
            "reduce_min" => Op::ReduceMin { axes: vec![] },
            "argmax" => Op::ArgMax {
                axis: 1,
                last: false,
            },
            "argmin" => Op::ArgMin {
                axis: 0,
                last: true,
            },
            "dot" => {
                let op = Op::Dot {
                    lhs_batch: vec![],
                    rhs_batch: vec![],
                    lhs_contract: vec![1],
                    rhs_contract: vec![1],
                };
                out.push((op, vec![x.clone(), y.clone()]));
                continue;
            }
            "qdot" => {
                // lhs of the dtype (u8 or i8), an i8 rhs, a zero point of lhs's type.
                let op = Op::Qdot {
                    lhs_batch: vec![],
                    rhs_batch: vec![],
                    lhs_contract: vec![1],
                    rhs_contract: vec![0],
                };
                let w = rng.tensor(DType::I8, &[x.shape()[1], 2]);
                let z = rng.tensor(dtype, &[]);
                out.push((op, vec![x.clone(), w, z]));
                continue;
            }
            "qconv" => {
                // An image of the dtype (u8 or i8), i8 filters, a zero point of its type.
                let op = Op::Qconv {
                    stride: vec![1],
                    dilation: vec![1],
                    pad_low: vec![1],
                    pad_high: vec![0],
                    groups: 1,
                };
                let x = rng.tensor(dtype, &[1, 2, 4]);
                let w = rng.tensor(DType::I8, &[3, 2, 2]);
                let z = rng.tensor(dtype, &[]);
                out.push((op, vec![x, w, z]));
                continue;
            }
            "qdot4" => {
                // f32 rows of K = 3 by two rows of one block of 16 4-bit values (8 bytes).
                let op = Op::Qdot4 {
                    block: 16,
                    quantize_x: false,
                };
                let w = rng.tensor(DType::U8, &[2, 8]);
                let (s, z) = (
                    rng.tensor(DType::F32, &[2, 1]),
                    rng.tensor(DType::F32, &[2, 1]),
                );
                out.push((op, vec![x.clone(), w, s, z]));
                continue;
            }
            "conv" => {
                let op = Op::Conv {
                    stride: vec![1],
                    dilation: vec![1],
                    pad_low: vec![1],
                    pad_high: vec![0],
                    groups: 2,
                };
                out.push((op, vec![img.clone(), ker.clone()]));
                continue;
            }
            "conv_blocked" => {
                // Blocks of 2 channels: a blocked [1, 1, 3, 2, 2] image and a plain one.
                let op = |groups| Op::ConvBlocked {
                    stride: vec![1, 1],
                    dilation: vec![1, 1],
                    pad_low: vec![1, 0],
                    pad_high: vec![0, 0],
                    groups,
                    block: 2,
                };
                let blocked = rng.tensor(dtype, &[1, 1, 3, 2, 2]);
                let plain = rng.tensor(dtype, &[1, 2, 3, 2]);
                out.push((
                    op(1),
                    vec![blocked.clone(), rng.tensor(dtype, &[4, 2, 2, 1])],
                ));
                out.push((op(1), vec![plain, rng.tensor(dtype, &[2, 2, 1, 2])]));
                out.push((op(2), vec![blocked, rng.tensor(dtype, &[2, 1, 2, 2])]));
                continue;
            }
            "reduce_window" => {
                for kind in ReduceKind::ALL {
                    let op = Op::ReduceWindow {
                        kind: *kind,
                        window: vec![1, 2],
                        stride: vec![1, 2],
                        dilation: vec![1, 1],
                        pad_low: vec![0, 1],
                        pad_high: vec![0, 0],
                    };
                    out.push((op, vec![x.clone()]));
                }
                continue;
            }
            "fused" => {
                // A kernel whose body moves its operand (every dtype can be reshaped).
                let mut body = Builder::new("body");
                let p = body
                    .param("in0", dtype, Shape::from_consts(&[2, 3]))
                    .unwrap();
                let r = body.reshape(p, Shape::from_consts(&[3, 2])).unwrap();
                body.output("out0", r).unwrap();
                Op::Fused {
                    kind: "move".into(),
                    body: kiln::ir::Region::new(body.into_graph()),
                }
            }
            "loop" => {
                // Carries x through a body that moves it, scanning y's rows.
                let mut body = Builder::new("body");
                let c = body.param("c", dtype, Shape::from_consts(&[2, 3])).unwrap();
                let e = body.param("e", dtype, Shape::from_consts(&[3])).unwrap();
                body.output("c", c).unwrap();
                body.output("e", e).unwrap();
                let op = Op::Loop {
                    count: Dim::Const(2),
                    carry: 1,
                    scan: 1,
                    reverse: true,
                    body: kiln::ir::Region::new(body.into_graph()),
                };
                out.push((op, vec![x.clone(), y.clone()]));
                continue;
            }
            "nonzero" => Op::NonZero {
                count: Dim::sym("k"),
            },
            "unique" => {
                for (axis, sorted) in [(vec![], true), (vec![1], false)] {
                    let op = Op::Unique {
                        axis,
                        sorted,
                        count: Dim::sym("u"),
                    };
                    out.push((op, vec![x.clone()]));
                }
                continue;
            }
            "dyn_iota" => {
                let op = Op::DynIota {
                    count: Dim::sym("r"),
                };
                out.push((op, vec![Tensor::scalar(3i64)]));
                continue;
            }
            "dyn_topk" => {
                let op = Op::DynTopK {
                    axis: 1,
                    largest: true,
                    count: Dim::sym("t"),
                };
                out.push((op, vec![x.clone(), Tensor::scalar(2i64)]));
                continue;
            }
            "choose" => {
                let op = Op::Choose {
                    shape: Shape::from_consts(&[2, 3]),
                };
                out.push((op, vec![Tensor::scalar(true), x.clone(), y.clone()]));
                continue;
            }
            "nms" => {
                let op = Op::Nms {
                    center: false,
                    thresholded: true,
                    count: Dim::sym("k"),
                };
                let args = vec![
                    rng.tensor(dtype, &[1, 2, 4]),
                    rng.tensor(dtype, &[1, 3, 2]),
                    Tensor::scalar(1i64),
                    scalar.clone(),
                    scalar.clone(),
                ];
                out.push((op, args));
                continue;
            }
            "tree_walk" => {
                let t = |v: Vec<i64>| Tensor::from_vec(vec![3], v).unwrap();
                let args = vec![
                    x.clone(),
                    t(vec![0, 0, 2]),
                    rng.tensor(dtype, &[3]),
                    t(vec![0, 6, 6]),
                    t(vec![1, 1, 2]),
                    t(vec![2, 1, 2]),
                    Tensor::from_vec(vec![3], vec![true, false, false]).unwrap(),
                    Tensor::from_vec(vec![2], vec![0i64, 2]).unwrap(),
                ];
                out.push((Op::TreeWalk, args));
                continue;
            }
            "lstm" | "gru" | "rnn" => {
                // Two steps of one row over 2 units, in both directions (a GRU in both forms):
                // the input projection and weights, then the layer's own operands.
                for reverse in [false, true] {
                    let (op, gates, rest): (Op, usize, &[&[usize]]) = match *m {
                        "lstm" => (Op::Lstm { reverse }, 4, &[&[1, 2], &[1, 2]]),
                        "gru" => {
                            let linear_before_reset = reverse;
                            let op = Op::Gru {
                                reverse,
                                linear_before_reset,
                            };
                            (op, 3, &[&[2], &[1, 2]])
                        }
                        _ => (Op::Rnn { reverse }, 1, &[&[1, 2]]),
                    };
                    let mut args = vec![
                        rng.tensor(dtype, &[2, 1, 2 * gates]),
                        rng.tensor(dtype, &[2, 2 * gates]),
                    ];
                    args.extend(rest.iter().map(|shape| rng.tensor(dtype, shape)));
                    out.push((op, args));
                }
                continue;
            }
            "topk" => Op::TopK {
                k: 2,
                axis: 1,
                largest: false,
            },
            _ => {
                // Elementwise unary or binary ops, chosen by their arity.
                let ctx = kiln::ir::AttrCtx {
                    results: &[],
                    constant: &|_| None,
                    region: None,
                };
                let op = Op::from_text(m, vec![], &ctx).unwrap().unwrap();
                let args = match op.arity() {
                    kiln::ir::Arity::Exactly(1) => vec![x.clone()],
                    _ => vec![x.clone(), y.clone()],
                };
                out.push((op, args));
                continue;
            }
        };
        let args = if op.arity() == kiln::ir::Arity::Exactly(0) {
            vec![]
        } else {
            vec![x.clone()]
        };
        out.push((op, args));
    }
    out
}

#[test]
fn every_op_runs_on_every_accepted_dtype() {
    let mut ran = std::collections::BTreeMap::<&str, usize>::new();
    for dtype in DType::ALL {
        for (op, args) in instances(dtype) {
            let name = op.mnemonic();
            let types: Vec<TensorType> = args.iter().map(Tensor::ty).collect();
            if op.infer(&types).is_err() {
                continue;
            }
            let mut b = Builder::new("t");
            let params: Vec<_> = args
                .iter()
                .enumerate()
                .map(|(i, t)| b.param(&format!("a{i}"), t.dtype(), t.ty().shape).unwrap())
                .collect();
            let outs = b.op(op.clone(), &params).unwrap();
            for (i, v) in outs.iter().enumerate() {
                b.output(&format!("y{i}"), *v).unwrap();
            }
            let g = b.finish().unwrap();
            let named: Vec<_> = args
                .into_iter()
                .enumerate()
                .map(|(i, t)| (format!("a{i}"), t))
                .collect();
            match kiln::interpret(&g, &named, &Default::default()) {
                Ok(outs) => {
                    // Dims a data-dependent op defines are whatever the data says.
                    let defined = op.defines().and_then(|d| d.as_sym()).map(String::from);
                    for ((_, t), v) in outs.iter().zip(g.outputs()) {
                        let want = g.value_type(v.1);
                        let ok = t.dtype() == want.dtype
                            && t.shape().len() == want.rank()
                            && want.shape.dims().iter().zip(t.shape()).all(|(d, &n)| {
                                d.as_const() == Some(n as i64)
                                    || (d.as_sym().is_some() && d.as_sym() == defined.as_deref())
                            });
                        assert!(ok, "{name} on {dtype}: {:?} for {want}", t.shape());
                    }
                    *ran.entry(name).or_default() += 1;
                }
                Err(e) if e.to_string().contains("division by zero") => {}
                Err(e) => panic!("{name} on {dtype}: {e}"),
            }
        }
    }
    let missing: Vec<&str> = Op::MNEMONICS
        .iter()
        .copied()
        .filter(|m| !ran.contains_key(m) && !["param", "constant", "dims"].contains(m))
        .collect();
    assert!(missing.is_empty(), "ops never run: {missing:?}");
}
