//! Convolutions: a gemm on the image (pointwise), one library `conv2d` per depthwise channel,
//! blocks of output rows with their im2col, or row-accumulating vector loops over a padded copy.

use super::epilogue::Chain;
use super::*;

impl Lowering<'_> {
    /// Window taps `pos` (one per axis of `dims`) clamped into the axes, and whether all of
    /// them were inside: a guarded load reads the clamped index and discards what it read
    /// unless the condition holds.
    pub(super) fn clamp(&mut self, pos: &[Expr], dims: &[Dim]) -> (Vec<Expr>, Expr) {
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let mut ok = Expr::Int(1, DType::Bool);
        let mut out = Vec::new();
        for (i, d) in pos.iter().zip(dims) {
            let n = self.dim(d);
            let inside = op(
                Op::And,
                vec![
                    op(Op::Ge, vec![i.clone(), Expr::i64(0)], DType::Bool),
                    op(Op::Lt, vec![i.clone(), n], DType::Bool),
                ],
                DType::Bool,
            );
            out.push(op(
                Op::Select,
                vec![inside.clone(), i.clone(), Expr::i64(0)],
                DType::I64,
            ));
            ok = op(Op::And, vec![ok, inside], DType::Bool);
        }
        (out, ok)
    }

    /// A conv's attributes and operands with its (static) shapes.
    pub(super) fn static_conv(&self, v: Value) -> StaticConv {
        let node = self.g.node(v.node);
        let Op::Conv {
            stride,
            dilation,
            pad_low,
            groups,
            ..
        } = node.op()
        else {
            unreachable!("called on convs")
        };
        let (xv, wv) = (node.inputs()[0], node.inputs()[1]);
        let os_shape = self.ty(v).shape.clone();
        StaticConv {
            stride: stride.clone(),
            dilation: dilation.clone(),
            pad_low: pad_low.clone(),
            groups: *groups,
            xv,
            wv,
            xs: static_dims(&self.ty(xv).shape),
            ws: static_dims(&self.ty(wv).shape),
            os: static_dims(&os_shape),
            os_shape,
        }
    }

    /// A static f32 2-D conv with one input channel per group (depthwise): one library plane
    /// conv per image and output channel, in a parallel nest (which an epilogue may join).
    pub(super) fn conv_planes(
        &mut self,
        v: Value,
        out: BufId,
        xb: BufId,
        wb: BufId,
        chain: Option<&Chain>,
    ) -> Result<()> {
        let StaticConv {
            stride,
            dilation,
            pad_low,
            groups,
            xs,
            ws,
            os,
            os_shape,
            ..
        } = self.static_conv(v);
        let og = ws[0] / groups;
        let geometry = kernel::routines::conv::Geometry {
            h: xs[2],
            w: xs[3],
            oh: os[2],
            ow: os[3],
            kh: ws[2],
            kw: ws[3],
            sh: stride[0],
            sw: stride[1],
            dh: dilation[0],
            dw: dilation[1],
            ph: pad_low[0],
            pw: pad_low[1],
        };
        let rows = Shape::new(os_shape.dims()[..2].to_vec());
        self.nest(&rows, DType::F32, |_, idx| {
            let (n, oc) = (idx[0].clone(), idx[1].clone());
            let ch = Expr::index_op(Op::Div, oc.clone(), Expr::i64(og));
            let out_off = (n.clone() * Expr::i64(os[1]) + oc.clone()) * Expr::i64(os[2] * os[3]);
            Ok(vec![Stmt::Call(Box::new(
                Conv2d {
                    x: xb,
                    x_off: (n * Expr::i64(xs[1]) + ch) * Expr::i64(xs[2] * xs[3]),
                    k: wb,
                    k_off: oc.clone() * Expr::i64(ws[2] * ws[3]),
                    out,
                    epilogue: Chain::of(chain, &oc, &out_off),
                    out_off,
                    geometry,
                }
                .into(),
            ))])
        })
    }

    /// A direct f32 convolution (static shapes) that accumulates whole output rows, so that
    /// the innermost loop runs along the output's last axis in vector lanes: per output row,
    /// `row = 0`, then `row[w] += x[.., w·stride + k·dilation] · weight` for every input
    /// channel of the group and window position (the order of the scalar loops, so sums
    /// round identically). Padding is a zero-filled copy of the input, so loads need no guard.
    pub(super) fn conv_rows(&mut self, v: Value, out: BufId, xb: BufId, wb: BufId) -> Result<()> {
        let lanes = self.machine.vector_lanes;
        let StaticConv {
            stride,
            dilation,
            pad_low,
            groups,
            xv,
            wv,
            xs,
            ws,
            os,
            os_shape,
        } = self.static_conv(v);
        let sp = xs.len() - 2;
        let (cg, og) = (ws[1], ws[0] / groups);
        let (pads, padded) = conv_padding(&xs, &ws, &os, &stride, &dilation, &pad_low);
        // With a stride of 2 along the last axis, the copy keeps even and odd columns apart,
        // so that each tap reads consecutive elements (vector loads, not gathers).
        // (Only for the few-tap form below, whose taps are constants.)
        let split = stride[sp - 1] == 2 && cg * ws[2..].iter().product::<i64>() <= 32;
        let zero = Expr::Float(0.0, DType::F32);
        let (pb, p_shape) = self.padded_copy(xv, xb, &pads, &padded, zero, split)?;
        // The index in the copy of input position `at` (one per axis; the last one is
        // `o * 2 + t` with `t` the tap's constant offset when split).
        let tap_index = |l: &mut Self, mut at: Vec<Expr>, o: Expr, t: i64| -> Expr {
            if split {
                at.push(Expr::i64(t % 2));
                at.push(o + Expr::i64(t / 2));
            } else {
                at.push(o * Expr::i64(stride[sp - 1]) + Expr::i64(t));
            }
            l.linear(&at, &p_shape)
        };
        let ow = *os.last().expect("convs have spatial axes");
        let rows = Shape::new(os_shape.dims()[..os.len() - 1].to_vec());
        let ws_shape = self.ty(wv).shape.clone();
        let add = |a: Expr, b: Expr| Expr::Op {
            op: Op::Add,
            args: vec![a, b],
            dtype: DType::F32,
        };
        let mul = |a: Expr, b: Expr| Expr::Op {
            op: Op::Mul,
            args: vec![a, b],
            dtype: DType::F32,
        };
        self.nest(&rows, DType::F32, |l, idx| {
            let (n, oc) = (idx[0].clone(), idx[1].clone());
            let wv_ = l.var(DType::I64);
            let w = Expr::Var(wv_);
            let mut oidx = idx.to_vec();
            oidx.push(w.clone());
            let oindex = l.linear(&oidx, &os_shape);
            let oindex_zero = oindex.clone();
            let g = Expr::index_op(Op::Div, oc.clone(), Expr::i64(og));
            let taps = cg * ws[2..].iter().product::<i64>();
            if taps <= 32 {
                // Few taps: one vector loop whose value sums them all in registers, in the
                // order of the loops below (so it rounds identically).
                let mut sum = Expr::Float(0.0, DType::F32);
                for t in 0..taps {
                    let (mut rest, mut kpos) = (t, vec![0; sp]);
                    for d in (0..sp).rev() {
                        kpos[d] = rest % ws[2 + d];
                        rest /= ws[2 + d];
                    }
                    let c = rest;
                    let mut pidx = vec![n.clone(), g.clone() * Expr::i64(cg) + Expr::i64(c)];
                    for d in 0..sp - 1 {
                        pidx.push(
                            idx[2 + d].clone() * Expr::i64(stride[d])
                                + Expr::i64(kpos[d] * dilation[d]),
                        );
                    }
                    let t = kpos[sp - 1] * dilation[sp - 1];
                    let index = tap_index(l, pidx, w.clone(), t);
                    let mut widx = vec![oc.clone(), Expr::i64(c)];
                    widx.extend(kpos.iter().map(|&k| Expr::i64(k)));
                    let x = Expr::Load {
                        buf: pb,
                        index: Box::new(index),
                    };
                    let wt = Expr::Load {
                        buf: wb,
                        index: Box::new(l.linear(&widx, &ws_shape)),
                    };
                    sum = add(sum, mul(x, wt));
                }
                return Ok(vec![Stmt::Loop {
                    var: wv_,
                    extent: Expr::i64(ow),
                    mark: Mark::Vector(lanes),
                    body: vec![Stmt::Store {
                        buf: out,
                        index: oindex,
                        value: sum,
                    }],
                }]);
            }
            let ch = l.var(DType::I64);
            let kv: Vec<VarId> = (0..sp).map(|_| l.var(DType::I64)).collect();
            let mut pidx = vec![n, g * Expr::i64(cg) + Expr::Var(ch)];
            for d in 0..sp {
                let o = if d + 1 == sp {
                    w.clone()
                } else {
                    idx[2 + d].clone()
                };
                pidx.push(o * Expr::i64(stride[d]) + Expr::Var(kv[d]) * Expr::i64(dilation[d]));
            }
            let pindex = l.linear(&pidx, &p_shape);
            let mut widx = vec![oc, Expr::Var(ch)];
            widx.extend(kv.iter().map(|&k| Expr::Var(k)));
            let windex = l.linear(&widx, &ws_shape);
            let x = Expr::Load {
                buf: pb,
                index: Box::new(pindex),
            };
            let wt = Expr::Load {
                buf: wb,
                index: Box::new(windex),
            };
            let acc = Expr::Load {
                buf: out,
                index: Box::new(oindex.clone()),
            };
            let update = Stmt::Loop {
                var: wv_,
                extent: Expr::i64(ow),
                mark: Mark::Vector(lanes),
                body: vec![Stmt::Store {
                    buf: out,
                    index: oindex,
                    value: add(acc, mul(x, wt)),
                }],
            };
            let mut loops = vec![(ch, Expr::i64(cg))];
            for (d, &k) in kv.iter().enumerate() {
                loops.push((k, Expr::i64(ws[2 + d])));
            }
            let zero = Stmt::Loop {
                var: wv_,
                extent: Expr::i64(ow),
                mark: Mark::Vector(lanes),
                body: vec![Stmt::Store {
                    buf: out,
                    index: oindex_zero,
                    value: Expr::Float(0.0, DType::F32),
                }],
            };
            let mut body = vec![zero];
            body.extend(serial(loops, vec![update]));
            Ok(body)
        })
    }

    /// `x` (static shape, in buffer `xb`) copied into a buffer of shape `padded` at offset
    /// `pad_low` per axis, the rest `fill` — or `xb` itself when nothing is padded. Loads of
    /// windows then need no guard. With `split`, the last axis is split by parity: padded
    /// position `(.., col)` lands at `(.., col % 2, col / 2)`, and the copy's last extent `e`
    /// becomes `2, ceil(e / 2)`.
    pub(super) fn padded_copy(
        &mut self,
        x: Value,
        xb: BufId,
        pad_low: &[i64],
        padded: &[i64],
        fill: Expr,
        split: bool,
    ) -> Result<(BufId, Shape)> {
        let xs = self.ty(x).shape.clone();
        let dtype = self.ty(x).dtype;
        let r = padded.len() - 1;
        let mut dims = padded.to_vec();
        if split {
            dims[r] = 2;
            dims.push((padded[r] + 1) / 2);
        }
        let p_shape = Shape::new(dims.iter().map(|&d| Dim::constant(d)).collect());
        if p_shape == xs && pad_low.iter().all(|&p| p == 0) {
            return Ok((xb, p_shape));
        }
        let n = self.k.bufs.len();
        let pb = self.buf(
            format!("pad{n}"),
            &TensorType::new(dtype, p_shape.clone()),
            BufKind::Scratch,
        )?;
        // Filled per row, in a nest like the copy's (so it runs parallel, and may fuse with
        // the copy per channel).
        self.nest(&p_shape, dtype, |l, idx| {
            Ok(vec![Stmt::Store {
                buf: pb,
                index: l.linear(idx, &p_shape),
                value: fill,
            }])
        })?;
        self.nest(&xs, dtype, |l, idx| {
            let mut at: Vec<Expr> = idx
                .iter()
                .zip(pad_low)
                .map(|(i, &p)| i.clone() + Expr::i64(p))
                .collect();
            if split {
                let col = at.pop().expect("a last axis");
                at.push(Expr::index_op(Op::Rem, col.clone(), Expr::i64(2)));
                at.push(Expr::index_op(Op::Div, col, Expr::i64(2)));
            }
            let index = l.linear(&at, &p_shape);
            let value = Expr::Load {
                buf: xb,
                index: Box::new(l.linear(idx, &xs)),
            };
            Ok(vec![Stmt::Store {
                buf: pb,
                index,
                value,
            }])
        })?;
        Ok((pb, p_shape))
    }

    /// Whether conv `v` with several output channels per group and a contraction of 8 or
    /// more (f32): a product with the image (a `gemm` or `conv2d_rows`).
    fn conv_product(&self, v: Value) -> bool {
        let node = self.g.node(v.node);
        let (Op::Conv { groups, .. }, [_, wv, ..]) = (node.op(), node.inputs()) else {
            return false;
        };
        let ws = &self.ty(*wv).shape;
        let og = ws.dim(0).exact_div(&Dim::constant(*groups));
        let taps = ws.dims()[1..]
            .iter()
            .try_fold(Dim::constant(1), |a, d| a.mul(d));
        self.ty(v).dtype == DType::F32
            && og.is_some_and(|d| d.as_const() != Some(1))
            && taps.ok().and_then(|d| d.as_const()).is_none_or(|n| n >= 8)
    }

    /// Whether conv `v` runs as routine calls (plane convs or products) that apply a fused
    /// epilogue ([`Chain`]).
    pub(super) fn conv_calls(&self, v: Value) -> bool {
        let node = self.g.node(v.node);
        let [xv, wv, ..] = node.inputs() else {
            return false;
        };
        let (xs, ws) = (&self.ty(*xv).shape, &self.ty(*wv).shape);
        let planes = [xs, ws, &self.ty(v).shape].iter().all(|s| s.is_static())
            && xs.rank() == 4
            && ws.dim(1).as_const() == Some(1);
        self.ty(v).dtype == DType::F32 && (planes || self.conv_product(v))
    }

    /// A convolution: f32 ones with enough channels per group as an im2col buffer and one
    /// `gemm` per image and group; the rest (depthwise, integers) as direct loops. Padding is
    /// a guarded load: the index is clamped and the value replaced by zero outside. With a
    /// `chain` (only where [`Lowering::conv_calls`]), the calls apply it and `out` is its end.
    pub(super) fn conv(&mut self, v: Value, out: BufId, chain: Option<&Chain>) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::Conv {
            stride,
            dilation,
            pad_low,
            groups,
            ..
        } = node.op()
        else {
            unreachable!("called on convs")
        };
        let (xv, wv) = (node.inputs()[0], node.inputs()[1]);
        let (xs, ws) = (self.ty(xv).shape.clone(), self.ty(wv).shape.clone());
        let ty = self.ty(v);
        let os = ty.shape.clone();
        let dtype = ty.dtype;
        let sp = xs.rank() - 2;
        let groups = *groups;
        // Operands in buffers, row-major.
        for op in [xv, wv] {
            if !self.bufs.contains_key(&op) {
                let n = self.k.bufs.len();
                let b = self.buf(format!("t{n}"), self.ty(op), BufKind::Scratch)?;
                self.elementwise_nest(op, b)?;
            }
        }
        let (xb, wb) = (self.bufs[&xv], self.bufs[&wv]);
        let cg = ws.dim(1).clone();
        let o = ws.dim(0).clone();
        let og = o
            .exact_div(&Dim::constant(groups))
            .ok_or_else(|| Unsupported("output channels not divisible by groups".into()))?;
        let prod = |ds: &[Dim]| -> Result<Dim> {
            ds.iter().try_fold(Dim::constant(1), |a, d| {
                a.mul(d).map_err(|e| Unsupported(e.to_string()))
            })
        };
        let ks = prod(&ws.dims()[2..])?;
        let ps = prod(&os.dims()[2..])?;
        // A gemm pays off with several output channels per group and a long contraction.
        let big = self.conv_product(v);
        let i64op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        // The input position of output position `p` and window position `k` along spatial
        // axis `d`, and whether it is inside the input.
        // x[n, ch, taps...] with zero outside the input.
        let guarded = |l: &mut Self, n: Expr, ch: Expr, ps: &[Expr], ks: &[Expr]| -> Expr {
            let taps: Vec<Expr> = (0..sp)
                .map(|d| {
                    ps[d].clone() * Expr::i64(stride[d])
                        + Expr::i64(-pad_low[d])
                        + ks[d].clone() * Expr::i64(dilation[d])
                })
                .collect();
            let (clamped, ok) = l.clamp(&taps, &xs.dims()[2..]);
            let mut idx = vec![n, ch];
            idx.extend(clamped);
            let index = l.linear(&idx, &xs);
            let load = Expr::Load {
                buf: xb,
                index: Box::new(index),
            };
            i64op(Op::Select, vec![ok, load, constant(0.0, dtype)], dtype)
        };
        let fixed = [&xs, &ws, &os].iter().all(|s| s.is_static());
        if dtype == DType::F32 && fixed && sp == 2 && cg.as_const() == Some(1) {
            self.conv_planes(v, out, xb, wb, chain)?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        if !big && dtype == DType::F32 && fixed {
            self.conv_rows(v, out, xb, wb)?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        if !big {
            let acc = self.var(dtype);
            self.nest(&os, dtype, |l, idx| {
                let (n, oc) = (idx[0].clone(), idx[1].clone());
                let og_e = l.dim(&og);
                let cg_e = l.dim(&cg);
                let g = Expr::index_op(Op::Div, oc.clone(), og_e);
                let ch = l.var(DType::I64);
                let kv: Vec<VarId> = (0..sp).map(|_| l.var(DType::I64)).collect();
                let kx: Vec<Expr> = kv.iter().map(|&k| Expr::Var(k)).collect();
                let x = guarded(l, n, g * cg_e + Expr::Var(ch), &idx[2..], &kx);
                let mut widx = vec![oc, Expr::Var(ch)];
                widx.extend(kx.iter().cloned());
                let windex = l.linear(&widx, &ws);
                let w = Expr::Load {
                    buf: wb,
                    index: Box::new(windex),
                };
                let update = i64op(
                    Op::Add,
                    vec![Expr::Var(acc), i64op(Op::Mul, vec![x, w], dtype)],
                    dtype,
                );
                let mut loops = vec![(ch, l.dim(&cg))];
                for (d, &k) in kv.iter().enumerate() {
                    loops.push((k, l.dim(ws.dim(2 + d))));
                }
                let index = l.linear(idx, &os);
                let store = Stmt::Store {
                    buf: out,
                    index,
                    value: Expr::Var(acc),
                };
                Ok(accumulate(acc, constant(0.0, dtype), loops, update, store))
            })?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        let ck = cg.mul(&ks).map_err(|e| Unsupported(e.to_string()))?;
        // A pointwise conv (1×1 window, unit strides, no padding) is already a product with the
        // image: x[n, g·cg.., p] is the right operand.
        let one = Dim::constant(1);
        let pointwise = ws.dims()[2..].iter().all(|d| *d == one)
            && stride.iter().all(|&s| s == 1)
            && pad_low.iter().all(|&p| p == 0)
            && xs.dims()[2..] == os.dims()[2..];
        if pointwise {
            // One product per image and group; a grouped conv's products run in parallel
            // (each writes its own rows of the output), one loop over both.
            let iv = self.var(DType::I64);
            let i = Expr::Var(iv);
            let (n, g) = if groups == 1 {
                (i, Expr::i64(0))
            } else {
                (
                    Expr::index_op(Op::Div, i.clone(), Expr::i64(groups)),
                    Expr::index_op(Op::Rem, i, Expr::i64(groups)),
                )
            };
            let (ck_e, ps_e, og_e, o_e) =
                (self.dim(&ck), self.dim(&ps), self.dim(&og), self.dim(&o));
            let c_e = self.dim(xs.dim(1));
            let c_off = (n.clone() * o_e + g.clone() * og_e.clone()) * ps_e.clone();
            let epilogue = Chain::of(chain, &(g.clone() * og_e.clone()), &c_off);
            let body = vec![Stmt::Call(Box::new(
                Gemm {
                    a: wb,
                    a_off: g.clone() * og_e.clone() * ck_e.clone(),
                    a_rs: ck_e.clone(),
                    a_cs: Expr::i64(1),
                    b: xb,
                    b_off: (n.clone() * c_e + g.clone() * ck_e.clone()) * ps_e.clone(),
                    b_rs: ps_e.clone(),
                    b_cs: Expr::i64(1),
                    c: out,
                    c_off,
                    c_rs: ps_e.clone(),
                    m: og_e,
                    n: ps_e,
                    k: ck_e,
                    b_packed: None,
                    epilogue,
                }
                .into(),
            ))];
            let extent = self.dim(xs.dim(0)) * Expr::i64(groups);
            let mark = if groups == 1 {
                Mark::Serial
            } else {
                Mark::Parallel
            };
            let images = Stmt::Loop {
                var: iv,
                extent,
                mark,
                body,
            };
            self.k.body.extend(unit_free(vec![images]));
            self.bufs.insert(v, out);
            return Ok(());
        }
        if fixed && sp == 2 && dtype == DType::F32 {
            self.conv_row_blocks(v, out, xb, wb, chain)?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        // im2col: col[(ch, k...), p...] for one image and group, then W_g · col.
        let col_len = ck.mul(&ps).map_err(|e| Unsupported(e.to_string()))?;
        let col = self.buf(
            format!("col{}", self.k.bufs.len()),
            &TensorType::new(DType::F32, Shape::new(vec![col_len])),
            BufKind::Scratch,
        )?;
        let mut col_shape = vec![cg.clone()];
        col_shape.extend(ws.dims()[2..].iter().cloned());
        col_shape.extend(os.dims()[2..].iter().cloned());
        let col_shape = Shape::new(col_shape);
        let outer = Shape::new(vec![xs.dim(0).clone(), Dim::constant(groups)]);
        let (nv, gv) = (self.var(DType::I64), self.var(DType::I64));
        let (n, g) = (Expr::Var(nv), Expr::Var(gv));
        // With static shapes, a zero-padded copy of the input spares every tap its guard.
        let padded = if fixed {
            let (xd, wd, od) = (static_dims(&xs), static_dims(&ws), static_dims(&os));
            let (pads, dims) = conv_padding(&xd, &wd, &od, stride, dilation, pad_low);
            let zero = Expr::Float(0.0, DType::F32);
            Some(self.padded_copy(xv, xb, &pads, &dims, zero, false)?)
        } else {
            None
        };
        let mut body = Vec::new();
        {
            // The im2col nest, built with `nest` and moved inside the image/group loops.
            let before = self.k.body.len();
            let (n2, g2) = (n.clone(), g.clone());
            self.nest(&col_shape, DType::F32, |l, idx| {
                let cg_e = l.dim(&cg);
                let ch = g2 * cg_e + idx[0].clone();
                let value = match &padded {
                    Some((pb, p_shape)) => {
                        let mut at = vec![n2, ch];
                        for d in 0..sp {
                            at.push(
                                idx[1 + sp + d].clone() * Expr::i64(stride[d])
                                    + idx[1 + d].clone() * Expr::i64(dilation[d]),
                            );
                        }
                        Expr::Load {
                            buf: *pb,
                            index: Box::new(l.linear(&at, p_shape)),
                        }
                    }
                    None => guarded(l, n2, ch, &idx[1 + sp..], &idx[1..1 + sp]),
                };
                let index = l.linear(idx, &col_shape);
                Ok(vec![Stmt::Store {
                    buf: col,
                    index,
                    value,
                }])
            })?;
            body.extend(self.k.body.drain(before..));
        }
        let (ck_e, ps_e, og_e, o_e) = (self.dim(&ck), self.dim(&ps), self.dim(&og), self.dim(&o));
        let c_off = (n * o_e + g.clone() * og_e.clone()) * ps_e.clone();
        let epilogue = Chain::of(chain, &(g.clone() * og_e.clone()), &c_off);
        body.push(Stmt::Call(Box::new(
            Gemm {
                a: wb,
                a_off: g.clone() * og_e.clone() * ck_e.clone(),
                a_rs: ck_e.clone(),
                a_cs: Expr::i64(1),
                b: col,
                b_off: Expr::i64(0),
                b_rs: ps_e.clone(),
                b_cs: Expr::i64(1),
                c: out,
                c_off,
                c_rs: ps_e.clone(),
                m: og_e,
                n: ps_e,
                k: ck_e,
                b_packed: None,
                epilogue,
            }
            .into(),
        )));
        let loops = vec![(nv, self.dim(outer.dim(0))), (gv, self.dim(outer.dim(1)))];
        // One image and one group (the common case): the im2col nest is top-level, and so
        // parallel.
        self.k.body.extend(unit_free(serial(loops, body)));
        self.bufs.insert(v, out);
        Ok(())
    }

    /// A static 2-D f32 conv as blocks of output rows, in parallel over images, groups and
    /// blocks: one `conv2d_rows` call per block (the product of the group's filters with the
    /// block's image columns, packed straight from the image, padding included).
    pub(super) fn conv_row_blocks(
        &mut self,
        v: Value,
        out: BufId,
        xb: BufId,
        wb: BufId,
        chain: Option<&Chain>,
    ) -> Result<()> {
        let StaticConv {
            stride,
            dilation,
            pad_low,
            groups,
            xs,
            ws,
            os,
            ..
        } = self.static_conv(v);
        let (o, cg, kh, kw, oh, ow) = (ws[0], ws[1], ws[2], ws[3], os[2], os[3]);
        let og = o / groups;
        let k = cg * kh * kw;
        // 3×3 stride-1 convs of enough channels by Winograd's F(2×2, 3×3) where their filters
        // are constant (`prepack` transforms them; the routine falls back to the direct sum
        // without them).
        let geo = [
            xs[2],
            xs[3],
            oh,
            ow,
            kh,
            kw,
            stride[0],
            stride[1],
            dilation[0],
            dilation[1],
            pad_low[0],
            pad_low[1],
        ];
        let geometry = kernel::routines::conv::Geometry::of(geo);
        let wino = groups == 1 && kernel::routines::conv::winograd::applies(&geometry, cg, og);
        let rows = block_rows(oh, ow, cg, og * k * 4, self.machine.block_bytes as i64);
        let blocks = (oh + rows - 1) / rows;
        let iv = self.var(DType::I64);
        let i = Expr::Var(iv);
        // The image, group and block of iteration i (no division for a unit extent).
        let n = if xs[0] == 1 {
            Expr::i64(0)
        } else {
            Expr::index_op(Op::Div, i.clone(), Expr::i64(groups * blocks))
        };
        let g = if groups == 1 {
            Expr::i64(0)
        } else {
            Expr::index_op(
                Op::Rem,
                Expr::index_op(Op::Div, i.clone(), Expr::i64(blocks)),
                Expr::i64(groups),
            )
        };
        let b = if xs[0] * groups == 1 {
            i
        } else {
            Expr::index_op(Op::Rem, i, Expr::i64(blocks))
        };
        let y0 = b.clone() * Expr::i64(rows);
        let mut ints: Vec<Expr> = [cg, og].into_iter().chain(geo).map(Expr::i64).collect();
        ints.push(y0);
        ints.push(Expr::index_op(
            Op::Min,
            Expr::i64(rows),
            Expr::i64(oh) + b * Expr::i64(-rows),
        ));
        let out_off = (n.clone() * Expr::i64(o) + g.clone() * Expr::i64(og)) * Expr::i64(oh * ow);
        let epilogue = Chain::of(chain, &(g.clone() * Expr::i64(og)), &out_off);
        ints.push(Expr::i64(epilogue.act));
        let mut operands = vec![
            Some((
                xb,
                (n * Expr::i64(xs[1]) + g.clone() * Expr::i64(cg)) * Expr::i64(xs[2] * xs[3]),
            )),
            Some((wb, g * Expr::i64(og * k))),
        ];
        if wino {
            operands.push(None);
        }
        operands.push(Some((out, out_off)));
        operands.extend(epilogue.operands());
        let call = kernel::Call {
            routine: if wino { "conv2d_wino" } else { "conv2d_rows" }.into(),
            operands,
            ints,
            scalars: epilogue.scalars(),
            result: None,
        };
        self.k.body.push(Stmt::Loop {
            var: iv,
            extent: Expr::i64(xs[0] * groups * blocks),
            mark: Mark::Parallel,
            body: vec![Stmt::Call(Box::new(call))],
        });
        Ok(())
    }
}

/// Output rows per `conv2d_rows` block of a conv with `oh`×`ow` outputs and `c` input
/// channels: about 1024 columns, fewer when the block's input rows would outgrow
/// `block_bytes` (a core's cache) or leave fewer than four blocks — but not fewer than 32
/// columns (two of the product's column panels) while there are two blocks. (The routine
/// packs columns for its product a few rows at a time; the implicit product reads a padded
/// copy of the block's input rows, and longer runs of columns fill its tiles better; a 7×7
/// image in blocks of 2 rows ran its products one panel of 14 columns at a time.) Filters of
/// more than `block_bytes` (`filter_bytes`, 3×3 by 512 channels: 9.4 MB) are streamed from
/// memory once per block: then the blocks are as large as the cache allows, and the routine
/// splits a block's filters over threads instead (resnet50's 7×7 layers ran four blocks).
fn block_rows(oh: i64, ow: i64, c: i64, filter_bytes: i64, block_bytes: i64) -> i64 {
    let ow = ow.max(1);
    let mut rows = (1024 / ow).max(1);
    rows = rows.min((block_bytes / (4 * c * ow).max(1)).max(1));
    if filter_bytes > block_bytes {
        return rows.min(oh).max(1);
    }
    let least = ((32 + ow - 1) / ow).min((oh + 1) / 2);
    rows.min(((oh + 3) / 4).max(least)).max(1)
}

/// A conv node's attributes, operands and static shapes (see `Lowering::static_conv`).
pub(super) struct StaticConv {
    pub(super) stride: Vec<i64>,
    pub(super) dilation: Vec<i64>,
    pub(super) pad_low: Vec<i64>,
    pub(super) groups: i64,
    pub(super) xv: Value,
    pub(super) wv: Value,
    pub(super) xs: Vec<i64>,
    pub(super) ws: Vec<i64>,
    pub(super) os: Vec<i64>,
    pub(super) os_shape: Shape,
}

/// Extents of a padded copy of an input of extents `x` that covers every tap of windows
/// `window` (stride, dilation, low padding per axis) producing `out`.
pub(super) fn covering(
    x: &[i64],
    out: &[i64],
    window: &[i64],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
) -> Vec<i64> {
    (0..x.len())
        .map(|d| {
            let last = (out[d] - 1) * stride[d] + (window[d] - 1) * dilation[d] + 1;
            (x[d] + pad_low[d]).max(last)
        })
        .collect()
}

/// The low padding and extents of a conv input's padded copy ([`covering`] over the spatial
/// axes of input `x`, weight `w` and result `out`; batch and channels as they are).
pub(super) fn conv_padding(
    x: &[i64],
    w: &[i64],
    out: &[i64],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
) -> (Vec<i64>, Vec<i64>) {
    let mut pads = vec![0, 0];
    pads.extend_from_slice(pad_low);
    let mut padded = x[..2].to_vec();
    padded.extend(covering(
        &x[2..],
        &out[2..],
        &w[2..],
        stride,
        dilation,
        pad_low,
    ));
    (pads, padded)
}
