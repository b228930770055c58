//! Contractions: `dot` as loop nests, or as a library `gemm` when its operands are strided
//! f32 buffers with one contracted axis.

use super::epilogue::Chain;
use super::*;

impl Lowering<'_> {
    /// Dot `v` into `b`: `gemm` calls (applying `chain`, which only a dot that
    /// [`Lowering::gemm_columns`] takes), or loops.
    pub(super) fn dot(&mut self, v: Value, b: BufId, chain: Option<&Chain>) -> Result<()> {
        let (lv, rv, axes) = DotAxes::of(self.g, v).expect("called on dots");
        if self.gemm(v, b, chain)? {
            self.bufs.insert(v, b);
            return Ok(());
        }
        if chain.is_some() {
            return unsupported("an epilogue on a dot that is not a matrix product");
        }
        self.materialized(lv)?;
        self.materialized(rv)?;
        // A quantized product sums `(lhs - zero) · rhs` in i32 and stores the sum as f32.
        let zero = self.quantized(v)?;
        let (ls, rs) = (self.ty(lv).shape.clone(), self.ty(rv).shape.clone());
        let ty = self.ty(v);
        let dtype = if zero.is_some() { DType::I32 } else { ty.dtype };
        let DotAxes {
            lb,
            rb,
            lc,
            rc,
            lf,
            rf,
        } = axes;
        let acc = self.var(dtype);
        self.nest(&ty.shape, dtype, |l, idx| {
            let mut li = vec![Expr::i64(0); ls.rank()];
            let mut ri = vec![Expr::i64(0); rs.rank()];
            let mut o = idx.iter();
            for (&a, &c) in lb.iter().zip(&rb) {
                let e = o.next().expect("batch axes").clone();
                li[a] = e.clone();
                ri[c] = e;
            }
            for &a in &lf {
                li[a] = o.next().expect("lhs free axes").clone();
            }
            for &a in &rf {
                ri[a] = o.next().expect("rhs free axes").clone();
            }
            let mut loops = Vec::new();
            for (&a, &c) in lc.iter().zip(&rc) {
                let r = l.var(DType::I64);
                li[a] = Expr::Var(r);
                ri[c] = Expr::Var(r);
                loops.push((r, l.dim(ls.dim(a))));
            }
            let mut x = l.expr(lv, &li)?;
            let mut y = l.expr(rv, &ri)?;
            if let Some(z) = zero {
                let z = l.expr(z, &[])?;
                x = Expr::Op {
                    op: Op::Sub,
                    args: vec![widen(x), widen(z)],
                    dtype,
                };
                y = widen(y);
            }
            let update = Expr::Op {
                op: Op::Add,
                args: vec![
                    Expr::Var(acc),
                    Expr::Op {
                        op: Op::Mul,
                        args: vec![x, y],
                        dtype,
                    },
                ],
                dtype,
            };
            let index = l.linear(idx, &ty.shape);
            let value = match zero {
                Some(_) => Expr::Op {
                    op: Op::Cast {
                        dtype: DType::F32,
                        saturate: true,
                    },
                    args: vec![Expr::Var(acc)],
                    dtype: DType::F32,
                },
                None => Expr::Var(acc),
            };
            let store = Stmt::Store {
                buf: b,
                index,
                value,
            };
            Ok(accumulate(acc, constant(0.0, dtype), loops, update, store))
        })?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// `v` as a strided view of a buffer: the buffer and each axis's stride (in elements),
    /// when `v` is a buffer or transposes and broadcasts of one.
    pub(super) fn strided(&self, v: Value) -> Option<(BufId, Vec<Dim>)> {
        let ty = self.ty(v);
        let dense = |shape: &ir::Shape| -> Option<Vec<Dim>> {
            let mut strides = vec![Dim::constant(1); shape.rank()];
            for a in (0..shape.rank().saturating_sub(1)).rev() {
                strides[a] = strides[a + 1].mul(shape.dim(a + 1)).ok()?;
            }
            Some(strides)
        };
        if let Some(&b) = self.bufs.get(&v) {
            return Some((b, dense(&ty.shape)?));
        }
        let node = self.g.node(v.node);
        match node.op() {
            // A reshape of a dense buffer is that buffer, densely strided by its new shape.
            Op::Reshape { .. } => {
                let x = node.inputs()[0];
                let (b, s) = self.strided(x)?;
                (s == dense(&self.ty(x).shape)?).then_some(())?;
                Some((b, dense(&ty.shape)?))
            }
            Op::Transpose { perm } => {
                let (b, s) = self.strided(node.inputs()[0])?;
                Some((b, perm.iter().map(|&p| s[p as usize].clone()).collect()))
            }
            Op::Broadcast { dims, .. } => {
                let from = self.ty(node.inputs()[0]);
                let (b, s) = self.strided(node.inputs()[0])?;
                let mut out = vec![Dim::constant(0); ty.rank()];
                for (j, d) in from.shape.dims().iter().enumerate() {
                    let a = dims[j] as usize;
                    if d == ty.shape.dim(a) {
                        out[a] = s[j].clone();
                    }
                }
                Some((b, out))
            }
            _ => None,
        }
    }

    /// `v` as a strided buffer, copying it into scratch when it is computed.
    pub(super) fn as_strided(&mut self, v: Value) -> Result<(BufId, Vec<Dim>)> {
        if let Some(s) = self.strided(v) {
            return Ok(s);
        }
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), self.ty(v), BufKind::Scratch)?;
        self.elementwise_nest(v, b)?;
        Ok(self.strided(v).expect("now a buffer"))
    }

    /// A dense copy of `v` with its axes in `order` (axis `i` of the copy is `v`'s axis
    /// `order[i]`): the buffer, its shape and its strides.
    pub(super) fn permuted(
        &mut self,
        v: Value,
        order: &[usize],
    ) -> Result<(BufId, Shape, Vec<Dim>)> {
        let ty = self.ty(v).clone();
        let shape = Shape::new(order.iter().map(|&a| ty.shape.dim(a).clone()).collect());
        let copy = ir::TensorType {
            dtype: ty.dtype,
            shape: shape.clone(),
        };
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), &copy, BufKind::Scratch)?;
        self.nest(&shape, ty.dtype, |l, idx| {
            let mut at = vec![Expr::i64(0); ty.shape.rank()];
            for (i, &a) in order.iter().enumerate() {
                at[a] = idx[i].clone();
            }
            let value = l.expr(v, &at)?;
            Ok(vec![Stmt::Store {
                buf: b,
                index: l.linear(idx, &shape),
                value,
            }])
        })?;
        let strides =
            dense_strides(&shape).ok_or_else(|| Unsupported("a copy's strides overflow".into()))?;
        Ok((b, shape, strides))
    }

    /// Whether dot `v` becomes `gemm` calls ([`Lowering::gemm`]) whose columns are its last
    /// axis (one free axis on the right), so that an epilogue's operands may run along them.
    pub(super) fn gemm_columns(&self, v: Value) -> bool {
        // Every f32 dot with one contracted axis is a gemm (operands whose free axes do not
        // merge are read from a copy that lays them out as one), whose columns are the
        // result's last axis when the right operand has one free axis.
        let Some((_, _, axes)) = DotAxes::of(self.g, v) else {
            return false;
        };
        self.ty(v).dtype == DType::F32 && axes.lc.len() == 1 && axes.rf.len() == 1
    }

    /// An f32 dot with one contracted axis as calls of the library matrix product (one per
    /// batch element), applying `chain` as they store; `false` when the dot does not have
    /// that form.
    pub(super) fn gemm(&mut self, v: Value, out: BufId, chain: Option<&Chain>) -> Result<bool> {
        let Some((lv, rv, axes)) = DotAxes::of(self.g, v) else {
            return Ok(false);
        };
        let ty = self.ty(v);
        if ty.dtype != DType::F32 || axes.lc.len() != 1 {
            return Ok(false);
        }
        // A quantized product: u8 rows (contiguous) by i8 B, its zero point a buffer.
        let zero = self.quantized(v)?;
        if zero.is_some() && self.ty(lv).dtype != DType::U8 {
            return Ok(false);
        }
        let (mut ls, mut rs) = (self.ty(lv).shape.clone(), self.ty(rv).shape.clone());
        let DotAxes {
            mut lb,
            mut rb,
            mut lc,
            mut rc,
            mut lf,
            mut rf,
        } = axes;
        let (mut la, mut lst) = self.as_strided(lv)?;
        let (mut ra, mut rst) = self.as_strided(rv)?;
        // Free axes not laid out as one (a batch of images around the contracted channels):
        // the product reads a copy with batch axes first, then free, then contracted (the
        // left) or contracted, then free (the right).
        if merged(&lf, &ls, &lst).is_none() {
            let order: Vec<usize> = lb.iter().chain(&lf).chain(&lc).copied().collect();
            (la, ls, lst) = self.permuted(lv, &order)?;
            let (nb, nf) = (lb.len(), lf.len());
            (lb, lf, lc) = ((0..nb).collect(), (nb..nb + nf).collect(), vec![nb + nf]);
        }
        if merged(&rf, &rs, &rst).is_none() {
            let order: Vec<usize> = rb.iter().chain(&rc).chain(&rf).copied().collect();
            (ra, rs, rst) = self.permuted(rv, &order)?;
            let nb = rb.len();
            (rb, rc, rf) = ((0..nb).collect(), vec![nb], (nb + 1..rs.rank()).collect());
        }
        let (Some((m, a_rs)), Some((n, b_cs))) = (merged(&lf, &ls, &lst), merged(&rf, &rs, &rst))
        else {
            return Ok(false);
        };
        let (a_cs, b_rs) = (lst[lc[0]].clone(), rst[rc[0]].clone());
        if zero.is_some() && a_cs.as_const() != Some(1) {
            return Ok(false);
        }
        let za = match zero {
            Some(z) => {
                self.materialized(z)?;
                Some(self.as_strided(z)?.0)
            }
            None => None,
        };
        let k = ls.dim(lc[0]).clone();
        let mn = m.mul(&n).map_err(|e| Unsupported(e.to_string()))?;
        let batch = Shape::new(lb.iter().map(|&a| ls.dim(a).clone()).collect());
        self.nest(&batch, DType::I64, |l, idx| {
            let mut a_off = Expr::i64(0);
            let mut b_off = Expr::i64(0);
            for (i, (&x, &y)) in idx.iter().zip(lb.iter().zip(&rb)) {
                let (sx, sy) = (l.dim(&lst[x]), l.dim(&rst[y]));
                a_off = a_off + i.clone() * sx;
                b_off = b_off + i.clone() * sy;
            }
            let c_off = l.linear(idx, &batch) * l.dim(&mn);
            let epilogue = Chain::of(chain, &Expr::i64(0), &c_off);
            let g = Gemm {
                a: la,
                a_off,
                a_rs: l.dim(&a_rs),
                a_cs: l.dim(&a_cs),
                b: ra,
                b_off,
                b_rs: l.dim(&b_rs),
                b_cs: l.dim(&b_cs),
                c: out,
                c_off,
                c_rs: l.dim(&n),
                m: l.dim(&m),
                n: l.dim(&n),
                k: l.dim(&k),
                b_packed: None,
                epilogue,
            };
            let call = match za {
                Some(z) => g.quantized((z, Expr::i64(0))),
                None => g.into(),
            };
            Ok(vec![Stmt::Call(Box::new(call))])
        })?;
        Ok(true)
    }
}

impl Lowering<'_> {
    /// A `qdot4` into `out` as one `qgemm4` call (applying `chain`): its rows as a matrix
    /// whose elements along K are adjacent (copied so when they are not), the packed weight,
    /// scales and zero points dense.
    pub(super) fn qdot4(&mut self, v: Value, out: BufId, chain: Option<&Chain>) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::Qdot4 { block, quantize_x } = *node.op() else {
            return unsupported("called on a qdot4");
        };
        let ins = node.inputs().to_vec();
        // The rows: K adjacent elements each, the leading axes merged into one (else a copy).
        let x = ins[0];
        self.materialized(x)?;
        let shape = self.ty(x).shape.clone();
        let (mut xb, st) = self.as_strided(x)?;
        let rank = shape.rank();
        let lead: Vec<usize> = (0..rank.saturating_sub(1)).collect();
        let mut rows = merged(&lead, &shape, &st);
        if rank == 0 || st[rank - 1].as_const() != Some(1) || rows.is_none() {
            let order: Vec<usize> = (0..rank).collect();
            let (b, shape, st) = self.permuted(x, &order)?;
            (xb, rows) = (b, merged(&lead, &shape, &st));
        }
        let (m, a_rs) = rows.ok_or_else(|| Unsupported("qdot4's rows do not merge".into()))?;
        let mut bufs = vec![xb];
        for &v in &ins[1..] {
            let b = match self.constant_splat(v) {
                Some(b) => b,
                None => self.dense(v)?,
            };
            bufs.push(b);
        }
        let (xs, ws) = (self.ty(ins[0]).shape.clone(), self.ty(ins[1]).shape.clone());
        let (k, n) = (xs.dim(xs.rank() - 1).clone(), ws.dim(0).clone());
        let epilogue = Chain::of(chain, &Expr::i64(0), &Expr::i64(0));
        let mut operands: Vec<_> = bufs.iter().map(|&b| Some((b, Expr::i64(0)))).collect();
        // b_packed: made by `prepack` for a small constant weight.
        operands.push(None);
        operands.push(Some((out, Expr::i64(0))));
        operands.extend(epilogue.operands());
        let ints = vec![
            self.dim(&a_rs),
            self.dim(&n),
            self.dim(&m),
            self.dim(&n),
            self.dim(&k),
            Expr::i64(block),
            Expr::i64(i64::from(epilogue.cols)),
            Expr::i64(epilogue.act),
            Expr::i64(i64::from(quantize_x)),
        ];
        self.k.body.push(Stmt::Call(Box::new(kernel::Call {
            routine: "qgemm4".into(),
            operands,
            ints,
            scalars: epilogue.scalars(),
            result: None,
        })));
        self.bufs.insert(v, out);
        Ok(())
    }
}

impl Lowering<'_> {
    /// An f32 operand that is one constant everywhere (MatMulNBits' default zero point) as a
    /// constant buffer of its whole shape: `prepack` dequantizes a small 4-bit weight once
    /// only from operands it knows, and a buffer a loop fills at run time is not one
    /// (vit_tiny's symmetric 4-bit form dequantized its 512×128 weights every call: 0.70 →
    /// 0.47 ms a layer).
    fn constant_splat(&mut self, v: Value) -> Option<BufId> {
        if let Some(&b) = self.bufs.get(&v) {
            return Some(b);
        }
        let c = super::epilogue::scalar_value(self.g, v)?;
        let ty = self.ty(v).clone();
        let n = ty.shape.numel().ok().and_then(|d| d.as_const())?;
        if ty.dtype != DType::F32 || n > 1 << 20 {
            return None;
        }
        let b = self.splat_buffer(c, ty.shape.dims())?;
        self.bufs.insert(v, b);
        Some(b)
    }

    /// A `qdot`'s zero point (its third operand), `None` for a `dot`.
    fn quantized(&self, v: Value) -> Result<Option<Value>> {
        let node = self.g.node(v.node);
        Ok(match node.op() {
            Op::Qdot { .. } => Some(node.inputs()[2]),
            _ => None,
        })
    }
}

/// An 8-bit operand widened to the i32 a quantized product sums in.
fn widen(x: Expr) -> Expr {
    Expr::Op {
        op: Op::Cast {
            dtype: DType::I32,
            saturate: true,
        },
        args: vec![x],
        dtype: DType::I32,
    }
}

/// The axes of a dot's operands: batch, contracted and free (in order), per side.
pub(super) struct DotAxes {
    pub(super) lb: Vec<usize>,
    pub(super) rb: Vec<usize>,
    pub(super) lc: Vec<usize>,
    pub(super) rc: Vec<usize>,
    pub(super) lf: Vec<usize>,
    pub(super) rf: Vec<usize>,
}

impl DotAxes {
    /// Dot `v`'s operands and axes (`None` if `v` is no dot).
    pub(super) fn of(g: &Graph, v: Value) -> Option<(Value, Value, DotAxes)> {
        let node = g.node(v.node);
        let (Op::Dot {
            lhs_batch,
            rhs_batch,
            lhs_contract,
            rhs_contract,
        }
        | Op::Qdot {
            lhs_batch,
            rhs_batch,
            lhs_contract,
            rhs_contract,
        }) = node.op()
        else {
            return None;
        };
        let (lv, rv) = (node.inputs()[0], node.inputs()[1]);
        let ranks = (g.value_type(lv).rank(), g.value_type(rv).rank());
        let attrs = [lhs_batch, rhs_batch, lhs_contract, rhs_contract];
        Some((lv, rv, DotAxes::new(attrs, ranks.0, ranks.1)))
    }

    pub(super) fn new(attrs: [&Vec<i64>; 4], lrank: usize, rrank: usize) -> DotAxes {
        let us = |v: &[i64]| v.iter().map(|&a| a as usize).collect::<Vec<_>>();
        let [lb, rb, lc, rc] = attrs.map(|a| us(a));
        let free = |rank: usize, b: &[usize], c: &[usize]| -> Vec<usize> {
            (0..rank)
                .filter(|a| !b.contains(a) && !c.contains(a))
                .collect()
        };
        let (lf, rf) = (free(lrank, &lb, &lc), free(rrank, &rb, &rc));
        DotAxes {
            lb,
            rb,
            lc,
            rc,
            lf,
            rf,
        }
    }
}

/// Free axes `axes` of an operand (extents `shape`, strides `st`) as one matrix axis — its
/// size and stride — when they are laid out like one.
fn merged(axes: &[usize], shape: &Shape, st: &[Dim]) -> Option<(Dim, Dim)> {
    // Axes of extent 1 take no step, whatever their stride (a batch of one image).
    let axes: Vec<usize> = axes
        .iter()
        .copied()
        .filter(|&a| shape.dim(a).as_const() != Some(1))
        .collect();
    let Some(&last) = axes.last() else {
        return Some((Dim::constant(1), Dim::constant(0)));
    };
    let mut size = Dim::constant(1);
    for w in axes.windows(2) {
        if st[w[0]] != st[w[1]].mul(shape.dim(w[1])).ok()? {
            return None;
        }
    }
    for &a in &axes {
        size = size.mul(shape.dim(a)).ok()?;
    }
    Some((size, st[last].clone()))
}

/// The strides of a dense row-major tensor of `shape` (`None` if they overflow).
fn dense_strides(shape: &Shape) -> Option<Vec<Dim>> {
    let mut strides = vec![Dim::constant(1); shape.rank()];
    for a in (0..shape.rank().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1].mul(shape.dim(a + 1)).ok()?;
    }
    Some(strides)
}
