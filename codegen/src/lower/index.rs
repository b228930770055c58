//! Views as index arithmetic: inlining single-use values and views into their consumer's
//! index expressions, and reshapes as index splits within the axis groups that change.

use super::*;

impl Lowering<'_> {
    /// The value of `v` at `idx` computed from its operands.
    pub(super) fn inline(&mut self, v: Value, idx: &[Expr]) -> Result<Expr> {
        let g = self.g;
        let node = g.node(v.node);
        let ty = self.ty(v);
        let args = node.inputs();
        match node.op() {
            Op::Constant { value } => scalar(&value.tensor),
            Op::Iota { axis, .. } => Ok(cast(idx[*axis as usize].clone(), ty.dtype)),
            Op::Broadcast { dims, .. } => {
                let from = self.ty(args[0]);
                let mut sub = Vec::new();
                for (j, d) in from.shape.dims().iter().enumerate() {
                    let a = dims[j] as usize;
                    if d == ty.shape.dim(a) {
                        sub.push(idx[a].clone());
                    } else {
                        sub.push(Expr::i64(0));
                    }
                }
                self.expr(args[0], &sub)
            }
            Op::Transpose { perm } => {
                let mut sub = vec![Expr::i64(0); idx.len()];
                for (i, &p) in perm.iter().enumerate() {
                    sub[p as usize] = idx[i].clone();
                }
                self.expr(args[0], &sub)
            }
            Op::Slice {
                start,
                limit,
                stride,
            } => {
                // The verifier checked bounds only where it could: symbolic ones must be
                // provably inside the axis for every binding (a gate's slice of a
                // [batch, 4h] row is; `5..n` is not).
                let from = self.ty(args[0]).shape.clone();
                let inside = (0..from.rank()).all(|a| {
                    let nonneg = |x: std::result::Result<Dim, ir::DimError>| {
                        x.is_ok_and(|d| d.is_nonnegative())
                    };
                    let (s, l, n) = (&start[a], &limit[a], from.dim(a));
                    if stride[a] > 0 {
                        s.is_nonnegative() && nonneg(l.sub(s)) && nonneg(n.sub(l))
                    } else {
                        nonneg(l.add(&Dim::Const(1)))
                            && nonneg(s.sub(l))
                            && nonneg(n.sub(s).and_then(|d| d.sub(&Dim::Const(1))))
                    }
                });
                if !inside {
                    return unsupported("a slice with symbolic bounds");
                }
                let mut sub = Vec::new();
                for (a, i) in idx.iter().enumerate() {
                    let s = self.dim(&start[a]);
                    sub.push(s + i.clone() * Expr::i64(stride[a]));
                }
                self.expr(args[0], &sub)
            }
            // Its dims equal the operand's at run time (the executable checks before running).
            Op::Refine { .. } => self.expr(args[0], idx),
            Op::Reshape { .. } => {
                let from = self.ty(args[0]).shape.clone();
                let sub = self.reshape_index(idx, &ty.shape, &from)?;
                self.expr(args[0], &sub)
            }
            op if is_elementwise(op) => {
                if matches!(op, Op::Div | Op::Rem | Op::Mod) && !ty.dtype.is_float() {
                    return unsupported(format!("integer `{}`", op.mnemonic()));
                }
                let mut xs = Vec::new();
                for &a in args {
                    xs.push(self.expr(a, idx)?);
                }
                Ok(Expr::Op {
                    op: op.clone(),
                    args: xs,
                    dtype: ty.dtype,
                })
            }
            Op::Pad { low, mode, .. } => {
                let from = self.ty(args[0]).shape.clone();
                let pos: Vec<Expr> = idx
                    .iter()
                    .zip(low)
                    .map(|(i, &p)| i.clone() + Expr::i64(-p))
                    .collect();
                if *mode == ir::PadMode::Constant {
                    // Only axes that are padded (or cropped) need a guard.
                    let padded: Vec<usize> = (0..pos.len())
                        .filter(|&a| low[a] != 0 || ty.shape.dim(a) != from.dim(a))
                        .collect();
                    let dims: Vec<Dim> = padded.iter().map(|&a| from.dim(a).clone()).collect();
                    let taps: Vec<Expr> = padded.iter().map(|&a| pos[a].clone()).collect();
                    let (clamped, ok) = self.clamp(&taps, &dims);
                    let mut at = pos.clone();
                    for (&a, c) in padded.iter().zip(clamped) {
                        at[a] = c;
                    }
                    let x = self.expr(args[0], &at)?;
                    let fill = self.expr(args[1], &[])?;
                    return Ok(Expr::Op {
                        op: Op::Select,
                        args: vec![ok, x, fill],
                        dtype: ty.dtype,
                    });
                }
                let mut at = Vec::new();
                for (c, d) in pos.into_iter().zip(from.dims()) {
                    let Some(n) = d.as_const().filter(|&n| n > 0) else {
                        return unsupported(
                            "`pad` by edge, reflect or wrap of a symbolic or empty axis",
                        );
                    };
                    let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
                    let n_e = Expr::i64(n);
                    at.push(match mode {
                        ir::PadMode::Edge => op(
                            Op::Min,
                            vec![
                                op(Op::Max, vec![c, Expr::i64(0)], DType::I64),
                                Expr::i64(n - 1),
                            ],
                            DType::I64,
                        ),
                        ir::PadMode::Wrap => Expr::index_op(Op::Mod, c, n_e),
                        _ if n == 1 => Expr::i64(0),
                        _ => {
                            // Reflect: m = c mod 2(n-1); m, or 2(n-1) - m past the end.
                            let period = 2 * (n - 1);
                            let m = Expr::index_op(Op::Mod, c, Expr::i64(period));
                            op(
                                Op::Select,
                                vec![
                                    op(Op::Lt, vec![m.clone(), n_e], DType::Bool),
                                    m.clone(),
                                    Expr::i64(period) + Expr::i64(-1) * m,
                                ],
                                DType::I64,
                            )
                        }
                    });
                }
                self.expr(args[0], &at)
            }
            op => unsupported(format!("`{}` inside an expression", op.mnemonic())),
        }
    }

    /// Operand indices of a reshape from `from` to `to`: axes are matched in groups of equal
    /// element count, and only within a group is the index linearized and split again.
    pub(super) fn reshape_index(
        &mut self,
        idx: &[Expr],
        to: &Shape,
        from: &Shape,
    ) -> Result<Vec<Expr>> {
        let one = Dim::constant(1);
        let (td, fd) = (to.dims(), from.dims());
        let mut sub = vec![Expr::i64(0); fd.len()];
        let (mut i, mut j) = (0, 0);
        loop {
            while i < td.len() && td[i] == one {
                i += 1;
            }
            while j < fd.len() && fd[j] == one {
                j += 1;
            }
            if i == td.len() || j == fd.len() {
                break;
            }
            // Grow the group until both sides count the same elements; symbolic sizes that do
            // not match take everything that is left.
            let (mut ti, mut fj) = (vec![i], vec![j]);
            let (mut tp, mut fp) = (td[i].clone(), fd[j].clone());
            i += 1;
            j += 1;
            while tp != fp {
                match (tp.as_const(), fp.as_const()) {
                    (Some(a), Some(b)) if a < b && i < td.len() => {
                        tp = tp.mul(&td[i]).map_err(|e| Unsupported(e.to_string()))?;
                        ti.push(i);
                        i += 1;
                    }
                    (Some(a), Some(b)) if b < a && j < fd.len() => {
                        fp = fp.mul(&fd[j]).map_err(|e| Unsupported(e.to_string()))?;
                        fj.push(j);
                        j += 1;
                    }
                    _ => {
                        ti.extend(i..td.len());
                        fj.extend(j..fd.len());
                        i = td.len();
                        j = fd.len();
                        break;
                    }
                }
            }
            if ti.len() == 1 && fj.len() == 1 {
                sub[fj[0]] = idx[ti[0]].clone();
                continue;
            }
            let mut lin = Expr::i64(0);
            for &t in &ti {
                let d = self.dim(&td[t]);
                lin = lin * d + idx[t].clone();
            }
            // Split: the first operand axis of the group needs no remainder, the last no
            // quotient.
            let mut stride = Dim::constant(1);
            for (n, &f) in fj.iter().enumerate().rev() {
                let s = self.dim(&stride);
                let mut x = if n + 1 == fj.len() {
                    lin.clone()
                } else {
                    Expr::index_op(Op::Div, lin.clone(), s)
                };
                if n > 0 {
                    let d = self.dim(&fd[f]);
                    x = Expr::index_op(Op::Rem, x, d);
                }
                sub[f] = x;
                stride = stride.mul(&fd[f]).map_err(|e| Unsupported(e.to_string()))?;
            }
        }
        Ok(sub)
    }
}
