//! Windows and arg-reductions: pooling over identity-padded copies, arg-max/arg-min.

use super::conv::covering;
use super::*;

impl Lowering<'_> {
    /// argmax/argmin along `axis`: the first (or last, with `last`) extreme; a NaN is the
    /// extreme, as in the interpreter.
    pub(super) fn arg_reduce(
        &mut self,
        v: Value,
        axis: usize,
        max: bool,
        last: bool,
        out: BufId,
    ) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let xs = self.ty(x).shape.clone();
        let xd = self.ty(x).dtype;
        let os = self.ty(v).shape.clone();
        let (bi, bv, k, xvar) = (
            self.var(DType::I64),
            self.var(xd),
            self.var(DType::I64),
            self.var(xd),
        );
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let b = |x: bool| Expr::Int(x as i64, DType::Bool);
        self.nest(&os, DType::I64, |l, idx| {
            let mut full = idx[..axis].to_vec();
            full.push(Expr::Var(k));
            full.extend_from_slice(&idx[axis..]);
            let load = l.expr(x, &full)?;
            let x = Expr::Var(xvar);
            let cur = Expr::Var(bv);
            let strict = op(
                if max { Op::Gt } else { Op::Lt },
                vec![x.clone(), cur.clone()],
                DType::Bool,
            );
            let eq = op(Op::Eq, vec![x.clone(), cur.clone()], DType::Bool);
            let cmp = op(
                Op::Or,
                vec![strict, op(Op::And, vec![b(last), eq], DType::Bool)],
                DType::Bool,
            );
            let better = if xd.is_float() {
                let xn = op(Op::IsNan, vec![x.clone()], DType::Bool);
                let cn = op(Op::IsNan, vec![cur], DType::Bool);
                let not = |e: Expr| op(Op::Not, vec![e], DType::Bool);
                op(
                    Op::Or,
                    vec![
                        op(
                            Op::And,
                            vec![
                                xn.clone(),
                                op(Op::Or, vec![not(cn.clone()), b(last)], DType::Bool),
                            ],
                            DType::Bool,
                        ),
                        op(
                            Op::And,
                            vec![not(xn), op(Op::And, vec![not(cn), cmp], DType::Bool)],
                            DType::Bool,
                        ),
                    ],
                    DType::Bool,
                )
            } else {
                cmp
            };
            let better = op(
                Op::Or,
                vec![
                    op(Op::Eq, vec![Expr::Var(k), Expr::i64(0)], DType::Bool),
                    better,
                ],
                DType::Bool,
            );
            let extent = l.dim(xs.dim(axis));
            let index = l.linear(idx, &os);
            Ok(vec![
                Stmt::Set {
                    var: bi,
                    value: Expr::i64(0),
                },
                Stmt::Set {
                    var: bv,
                    value: constant(0.0, xd),
                },
                Stmt::Loop {
                    var: k,
                    extent,
                    mark: Mark::Serial,
                    body: vec![
                        Stmt::Set {
                            var: xvar,
                            value: load,
                        },
                        Stmt::Set {
                            var: bi,
                            value: op(
                                Op::Select,
                                vec![better.clone(), Expr::Var(k), Expr::Var(bi)],
                                DType::I64,
                            ),
                        },
                        Stmt::Set {
                            var: bv,
                            value: op(Op::Select, vec![better, x, Expr::Var(bv)], xd),
                        },
                    ],
                },
                Stmt::Store {
                    buf: out,
                    index,
                    value: Expr::Var(bi),
                },
            ])
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }

    /// Pooling: a reduction over each window; taps on padding are skipped (they read a
    /// clamped index and contribute the identity).
    pub(super) fn reduce_window(&mut self, v: Value, out: BufId) -> Result<()> {
        let lanes = self.machine.vector_lanes;
        let node = self.g.node(v.node);
        let Op::ReduceWindow {
            kind,
            window,
            stride,
            dilation,
            pad_low,
            ..
        } = node.op()
        else {
            unreachable!("called on reduce_window")
        };
        let x = node.inputs()[0];
        if !self.bufs.contains_key(&x) {
            let n = self.k.bufs.len();
            let b = self.buf(format!("t{n}"), self.ty(x), BufKind::Scratch)?;
            self.elementwise_nest(x, b)?;
        }
        let xb = self.bufs[&x];
        let xs = self.ty(x).shape.clone();
        let os = self.ty(v).shape.clone();
        let dtype = self.ty(v).dtype;
        let (step, init) = match kind {
            ir::ReduceKind::Sum => (Op::Add, constant(0.0, dtype)),
            ir::ReduceKind::Prod => (Op::Mul, constant(1.0, dtype)),
            ir::ReduceKind::Max => (Op::Max, extreme(dtype, false)),
            ir::ReduceKind::Min => (Op::Min, extreme(dtype, true)),
        };
        let static_f32 = dtype == DType::F32 && xs.is_static() && os.is_static() && xs.rank() > 0;
        let view = static_f32
            .then(|| {
                let w = [window, stride, dilation, pad_low].map(|v| v.as_slice());
                PlaneView::of(&static_dims(&xs), &static_dims(&os), w)
            })
            .flatten();
        let blocked = static_f32
            && xs.rank() == 5
            && xs.dim(4).as_const() == Some(16)
            && [0, 1, 4]
                .iter()
                .all(|&d| window[d] == 1 && stride[d] == 1 && dilation[d] == 1 && pad_low[d] == 0)
            && matches!(step, Op::Max | Op::Min | Op::Add);
        if blocked {
            // A channel-blocked image: one call per image and channel block, 16 channels a
            // vector.
            let (xd, od) = (static_dims(&xs), static_dims(&os));
            let mut ints = vec![xd[2], xd[3], od[2], od[3]];
            for v in [window, stride, dilation, pad_low] {
                ints.extend_from_slice(&v[2..4]);
            }
            let sizes = (xd[2] * xd[3] * 16, od[2] * od[3] * 16);
            // A global pool's calls take up to four blocks (their sums side by side); others
            // one each, for the threads.
            let per = if od[2] * od[3] == 1 { 4 } else { 1 };
            let planes = Shape::new(vec![os.dim(0).clone(), Dim::Const((od[1] + per - 1) / per)]);
            let calls = Calls {
                routine: "pool2d_nchwc",
                planes: &planes,
                sizes,
                blocks: Some((per, od[1])),
            };
            return self.pool_calls(v, calls, (xb, out), ints, &step);
        }
        let bytes = matches!(dtype, DType::U8 | DType::I8) && xs.is_static() && os.is_static();
        if bytes && matches!(step, Op::Max | Op::Min) && pad_low.iter().all(|&p| p >= 0) {
            // A quantized image's max or min pool, on its bytes: one call per plane.
            let w = [window, stride, dilation, pad_low].map(|v| v.as_slice());
            if let Some(view) = PlaneView::of(&static_dims(&xs), &static_dims(&os), w) {
                let ints = view.ints.to_vec();
                let sizes = (ints[0] * ints[1], ints[2] * ints[3]);
                let planes = Shape::new(os.dims()[..view.lead].to_vec());
                let calls = Calls {
                    routine: if dtype == DType::U8 {
                        "pool2d_u8"
                    } else {
                        "pool2d_i8"
                    },
                    planes: &planes,
                    sizes,
                    blocks: None,
                };
                return self.pool_calls(v, calls, (xb, out), ints, &step);
            }
        }
        // Sums only where output rows are a few wide (a global pool's one output per plane
        // runs faster as the loops below; rows narrower than a vector take a masked one).
        let rows_fill = view.as_ref().is_some_and(|v| v.ints[3] >= 4);
        if let Some(view) =
            view.filter(|_| matches!(step, Op::Max | Op::Min) || step == Op::Add && rows_fill)
        {
            // Pooling over planes: one library call per plane, in a parallel nest (sums in f64
            // in window order, as the loops below sum).
            let ints = view.ints.to_vec();
            let sizes = (ints[0] * ints[1], ints[2] * ints[3]);
            let planes = Shape::new(os.dims()[..view.lead].to_vec());
            let calls = Calls {
                routine: "pool2d",
                planes: &planes,
                sizes,
                blocks: None,
            };
            return self.pool_calls(v, calls, (xb, out), ints, &step);
        }
        if static_f32 && matches!(step, Op::Max | Op::Min) {
            // Max and min are exact in any order: accumulate whole output rows in vector
            // loops over a copy of the input padded with the identity.
            let (xd, od) = (static_dims(&xs), static_dims(&os));
            let padded = covering(&xd, &od, window, stride, dilation, pad_low);
            let (pb, p_shape) = self.padded_copy(x, xb, pad_low, &padded, init.clone(), false)?;
            let r = xd.len() - 1;
            let rows = Shape::new(os.dims()[..r].to_vec());
            let (wv, ow) = (self.var(DType::I64), od[r]);
            self.nest(&rows, dtype, |l, idx| {
                let w = Expr::Var(wv);
                let mut oidx = idx.to_vec();
                oidx.push(w.clone());
                let oindex = l.linear(&oidx, &os);
                let row = |body: Stmt| Stmt::Loop {
                    var: wv,
                    extent: Expr::i64(ow),
                    mark: Mark::Vector(lanes),
                    body: vec![body],
                };
                let kv: Vec<VarId> = (0..=r).map(|_| l.var(DType::I64)).collect();
                let at: Vec<Expr> = (0..=r)
                    .map(|d| {
                        let o = if d == r { w.clone() } else { idx[d].clone() };
                        o * Expr::i64(stride[d]) + Expr::Var(kv[d]) * Expr::i64(dilation[d])
                    })
                    .collect();
                let tap = Expr::Load {
                    buf: pb,
                    index: Box::new(l.linear(&at, &p_shape)),
                };
                let cur = Expr::Load {
                    buf: out,
                    index: Box::new(oindex.clone()),
                };
                let update = row(Stmt::Store {
                    buf: out,
                    index: oindex.clone(),
                    value: Expr::Op {
                        op: step.clone(),
                        args: vec![cur, tap],
                        dtype,
                    },
                });
                let loops = kv
                    .iter()
                    .enumerate()
                    .map(|(d, &k)| (k, Expr::i64(window[d])))
                    .collect();
                let mut body = vec![row(Stmt::Store {
                    buf: out,
                    index: oindex,
                    value: init.clone(),
                })];
                body.extend(unit_free(serial(loops, vec![update])));
                Ok(body)
            })?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        let (acc_ty, init) = accumulator(&step, dtype, init);
        let wide = acc_ty != dtype;
        let acc = self.var(acc_ty);
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        self.nest(&os, dtype, |l, idx| {
            let kv: Vec<VarId> = (0..xs.rank()).map(|_| l.var(DType::I64)).collect();
            let taps: Vec<Expr> = kv
                .iter()
                .enumerate()
                .map(|(d, &k)| {
                    idx[d].clone() * Expr::i64(stride[d])
                        + Expr::i64(-pad_low[d])
                        + Expr::Var(k) * Expr::i64(dilation[d])
                })
                .collect();
            let (at, ok) = l.clamp(&taps, xs.dims());
            let index = l.linear(&at, &xs);
            let mut xval = Expr::Load {
                buf: xb,
                index: Box::new(index),
            };
            if wide {
                xval = cast(xval, DType::F64);
            }
            let next = op(step.clone(), vec![Expr::Var(acc), xval], acc_ty);
            let update = op(Op::Select, vec![ok, next, Expr::Var(acc)], acc_ty);
            let loops = kv
                .iter()
                .enumerate()
                .map(|(d, &k)| (k, Expr::i64(window[d])))
                .collect();
            let index = l.linear(idx, &os);
            let value = if wide {
                cast(Expr::Var(acc), dtype)
            } else {
                Expr::Var(acc)
            };
            let store = Stmt::Store {
                buf: out,
                index,
                value,
            };
            Ok(accumulate(acc, init, loops, update, store))
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }
}

impl Lowering<'_> {
    /// Pooling `v` as one `routine` call per plane (`planes` the leading axes; `sizes` the
    /// elements of an input and an output plane), with geometry `ints` and the kind of
    /// `step`, in a parallel nest.
    #[allow(clippy::too_many_arguments)]
    fn pool_calls(
        &mut self,
        v: Value,
        calls: Calls,
        (xb, out): (BufId, BufId),
        mut ints: Vec<i64>,
        step: &Op,
    ) -> Result<()> {
        ints.push(match step {
            Op::Max => 0,
            Op::Min => 1,
            _ => 2,
        });
        let Calls {
            routine,
            planes,
            sizes: (xplane, oplane),
            blocks,
        } = calls;
        let dtype = self.ty(v).dtype;
        self.nest(planes, dtype, |l, idx| {
            let mut ints: Vec<Expr> = ints.iter().map(|&i| Expr::i64(i)).collect();
            let plane = match blocks {
                // Image i, group g: blocks per·g .. of the image's `total`.
                Some((per, total)) => {
                    let first = idx[1].clone() * Expr::i64(per);
                    // Every group full (or the one group all blocks): a constant count.
                    ints.push(if total <= per || total % per == 0 {
                        Expr::i64(per.min(total))
                    } else {
                        Expr::index_op(
                            Op::Min,
                            Expr::i64(per),
                            Expr::i64(total) + first.clone() * Expr::i64(-1),
                        )
                    });
                    idx[0].clone() * Expr::i64(total) + first
                }
                None => l.linear(idx, planes),
            };
            Ok(vec![Stmt::Call(Box::new(kernel::Call {
                routine: routine.into(),
                operands: vec![
                    Some((xb, plane.clone() * Expr::i64(xplane))),
                    Some((out, plane * Expr::i64(oplane))),
                ],
                ints,
                scalars: Vec::new(),
                result: None,
            }))])
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }
}

/// Library calls of a pooling, one per index of `planes`: `routine`, whose operands are
/// `sizes` (input, output) elements a plane apart, and with `blocks` = `(per, total)` calls
/// over groups of up to `per` of an image's `total` channel blocks (`planes`' second axis
/// counting the groups; the block count the routine's last int).
struct Calls<'a> {
    routine: &'static str,
    planes: &'a Shape,
    sizes: (i64, i64),
    blocks: Option<(i64, i64)>,
}

/// A window reduction as `pool2d` planes: the axes before `lead` are planes (their window
/// trivial), the rest one row-major `h×w` plane per index — the last two axes, or one windowed
/// axis with every later one merged into the plane's rows (LRN's sum across channels).
#[derive(Debug, PartialEq)]
struct PlaneView {
    lead: usize,
    /// The routine's geometry: `h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw`.
    ints: [i64; 12],
}

impl PlaneView {
    /// The view of a reduction of `xd` into `od` by `[window, stride, dilation, pad_low]`, if
    /// it has one.
    fn of(
        xd: &[i64],
        od: &[i64],
        [window, stride, dilation, pad_low]: [&[i64]; 4],
    ) -> Option<Self> {
        let r = xd.len();
        let trivial = |d: usize| {
            window[d] == 1
                && stride[d] == 1
                && dilation[d] == 1
                && pad_low[d] == 0
                && xd[d] == od[d]
        };
        let windowed: Vec<usize> = (0..r).filter(|&d| !trivial(d)).collect();
        let axis = |d: usize| [xd[d], od[d], window[d], stride[d], dilation[d], pad_low[d]];
        let (lead, h, w) = match windowed[..] {
            _ if r < 2 => return None,
            [] => return None,
            _ if windowed[0] >= r - 2 => (r - 2, axis(r - 2), axis(r - 1)),
            [a] => {
                let rest: i64 = xd[a + 1..].iter().product();
                (a, axis(a), [rest, rest, 1, 1, 1, 0])
            }
            _ => return None,
        };
        let [hx, ho, kh, sh, dh, ph] = h;
        let [wx, wo, kw, sw, dw, pw] = w;
        Some(PlaneView {
            lead,
            ints: [hx, wx, ho, wo, kh, kw, sh, sw, dh, dw, ph, pw],
        })
    }
}
