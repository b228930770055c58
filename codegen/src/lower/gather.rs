//! Data-dependent indexing: gather, gather_nd, scatter_nd (indices resolved and checked),
//! top-k and concatenation.

use super::*;

/// The check that i64 `index` is in `0..n`, ending the kernel with INDEX_OUT_OF_RANGE where
/// it is not.
pub(super) fn in_range(index: Expr, n: Expr) -> Stmt {
    let op = |op: Op, args: Vec<Expr>| Expr::Op {
        op,
        args,
        dtype: DType::Bool,
    };
    Stmt::Check {
        cond: op(
            Op::And,
            vec![
                op(Op::Ge, vec![index.clone(), Expr::i64(0)]),
                op(Op::Lt, vec![index, n]),
            ],
        ),
        code: codes::INDEX_OUT_OF_RANGE,
    }
}

impl Lowering<'_> {
    /// Statements that resolve the (possibly negative) index `raw` against extent `n` into a
    /// new i64 variable, ending the kernel with INDEX_OUT_OF_RANGE when it is outside.
    pub(super) fn resolve(&mut self, raw: Expr, n: Expr) -> (Vec<Stmt>, VarId) {
        let (t, u) = (self.var(DType::I64), self.var(DType::I64));
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let stmts = vec![
            Stmt::Set {
                var: t,
                value: cast(raw, DType::I64),
            },
            Stmt::Set {
                var: u,
                value: op(
                    Op::Select,
                    vec![
                        op(Op::Lt, vec![Expr::Var(t), Expr::i64(0)], DType::Bool),
                        Expr::Var(t) + n.clone(),
                        Expr::Var(t),
                    ],
                    DType::I64,
                ),
            },
            in_range(Expr::Var(u), n),
        ];
        (stmts, u)
    }

    pub(super) fn gather(&mut self, v: Value, axis: usize, b: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let (x, ids) = (node.inputs()[0], node.inputs()[1]);
        if let Some(routine) = self.lookup(x, ids, axis) {
            // A 256-entry table by bytes: one routine call over every element.
            let (table, src) = (self.dense(x)?, self.dense(ids)?);
            let n = self
                .ty(v)
                .shape
                .numel()
                .map_err(|e| Unsupported(e.to_string()))?;
            let n = self.dim(&n);
            self.k.body.push(Stmt::Call(Box::new(kernel::Call {
                routine: routine.into(),
                operands: vec![
                    Some((table, Expr::i64(0))),
                    Some((src, Expr::i64(0))),
                    Some((b, Expr::i64(0))),
                ],
                ints: vec![n],
                scalars: Vec::new(),
                result: None,
            })));
            self.bufs.insert(v, b);
            return Ok(());
        }
        let xs = self.ty(x).shape.clone();
        let irank = self.ty(ids).rank();
        let ty = self.ty(v);
        let n = self.dim(xs.dim(axis));
        self.nest(&ty.shape, ty.dtype, |l, idx| {
            let raw = l.expr(ids, &idx[axis..axis + irank])?;
            let (mut body, u) = l.resolve(raw, n);
            let mut sub: Vec<Expr> = idx[..axis].to_vec();
            sub.push(Expr::Var(u));
            sub.extend_from_slice(&idx[axis + irank..]);
            let value = l.expr(x, &sub)?;
            let index = l.linear(idx, &ty.shape);
            body.push(Stmt::Store {
                buf: b,
                index,
                value,
            });
            Ok(body)
        })?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// The lookup routine for a gather of `x` by `ids` along `axis`, where it is one: a
    /// 256-entry u8 or f32 table by u8 indices (every one inside it).
    fn lookup(&self, x: Value, ids: Value, axis: usize) -> Option<&'static str> {
        let (xt, it) = (self.ty(x), self.ty(ids));
        let table = axis == 0 && xt.rank() == 1 && xt.shape.dim(0).as_const() == Some(256);
        if !table || it.dtype != DType::U8 {
            return None;
        }
        match xt.dtype {
            DType::U8 => Some("lookup_u8"),
            DType::F32 => Some("lookup_f32"),
            _ => None,
        }
    }

    /// ONNX GatherND: the last axis of the indices addresses data axes `batch_dims..`; the
    /// result is the addressed slices.
    pub(super) fn gather_nd(&mut self, v: Value, batch_dims: usize, b: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let (x, ids) = (node.inputs()[0], node.inputs()[1]);
        let xs = self.ty(x).shape.clone();
        let is = self.ty(ids).shape.clone();
        let Some(m) = is.dims().last().and_then(|d| d.as_const()) else {
            return unsupported("`gather_nd` with a symbolic tuple length");
        };
        let m = m as usize;
        let t = is.rank() - 1;
        let ty = self.ty(v);
        self.nest(&ty.shape, ty.dtype, |l, idx| {
            let mut body = Vec::new();
            let mut sub: Vec<Expr> = idx[..batch_dims].to_vec();
            for j in 0..m {
                let mut at = idx[..t].to_vec();
                at.push(Expr::i64(j as i64));
                let raw = l.expr(ids, &at)?;
                let n = l.dim(xs.dim(batch_dims + j));
                let (stmts, u) = l.resolve(raw, n);
                body.extend(stmts);
                sub.push(Expr::Var(u));
            }
            sub.extend_from_slice(&idx[t..]);
            let value = l.expr(x, &sub)?;
            let index = l.linear(idx, &ty.shape);
            body.push(Stmt::Store {
                buf: b,
                index,
                value,
            });
            Ok(body)
        })?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// ONNX ScatterND: a copy of the data, then each index tuple in order writes (or reduces
    /// into) its slice, serially, so later tuples win as in the interpreter.
    pub(super) fn scatter_nd(
        &mut self,
        v: Value,
        reduction: ir::ScatterReduction,
        b: BufId,
    ) -> Result<()> {
        use ir::ScatterReduction as R;
        let node = self.g.node(v.node);
        let (x, ids, upd) = (node.inputs()[0], node.inputs()[1], node.inputs()[2]);
        let xs = self.ty(x).shape.clone();
        let is = self.ty(ids).shape.clone();
        let dtype = self.ty(v).dtype;
        let Some(m) = is.dims().last().and_then(|d| d.as_const()) else {
            return unsupported("`scatter_nd` with a symbolic tuple length");
        };
        if dtype == DType::Bool && reduction != R::None {
            return unsupported("`scatter_nd` reducing bools");
        }
        let m = m as usize;
        self.nest(&xs, dtype, |l, idx| {
            let value = l.expr(x, idx)?;
            let index = l.linear(idx, &xs);
            Ok(vec![Stmt::Store {
                buf: b,
                index,
                value,
            }])
        })?;
        let t = is.rank() - 1;
        let tv: Vec<VarId> = (0..t).map(|_| self.var(DType::I64)).collect();
        let ev: Vec<VarId> = (m..xs.rank()).map(|_| self.var(DType::I64)).collect();
        let tx: Vec<Expr> = tv.iter().map(|&v| Expr::Var(v)).collect();
        let ex: Vec<Expr> = ev.iter().map(|&v| Expr::Var(v)).collect();
        let mut body = Vec::new();
        let mut at: Vec<Expr> = Vec::new();
        for j in 0..m {
            let mut ti = tx.clone();
            ti.push(Expr::i64(j as i64));
            let raw = self.expr(ids, &ti)?;
            let n = self.dim(xs.dim(j));
            let (stmts, u) = self.resolve(raw, n);
            body.extend(stmts);
            at.push(Expr::Var(u));
        }
        at.extend(ex.iter().cloned());
        let index = self.linear(&at, &xs);
        let mut ui = tx.clone();
        ui.extend(ex.iter().cloned());
        let u = self.expr(upd, &ui)?;
        let old = Expr::Load {
            buf: b,
            index: Box::new(index.clone()),
        };
        let op = |op: Op| Expr::Op {
            op,
            args: vec![old.clone(), u.clone()],
            dtype,
        };
        let value = match reduction {
            R::None => u.clone(),
            R::Add => op(Op::Add),
            R::Mul => op(Op::Mul),
            R::Max => op(Op::Max),
            R::Min => op(Op::Min),
        };
        let slice: Vec<(VarId, Expr)> = ev
            .iter()
            .zip(&xs.dims()[m..])
            .map(|(&v, d)| (v, self.dim(d)))
            .collect();
        body.extend(serial(
            slice,
            vec![Stmt::Store {
                buf: b,
                index,
                value,
            }],
        ));
        let tuples: Vec<(VarId, Expr)> = tv
            .iter()
            .zip(&is.dims()[..t])
            .map(|(&v, d)| (v, self.dim(d)))
            .collect();
        self.k.body.extend(serial(tuples, body));
        self.bufs.insert(v, b);
        Ok(())
    }

    /// The `k` largest (or smallest) elements along `axis` and their indices, sorted, ties to
    /// the lower index, NaN above everything (the interpreter's order): each row keeps its
    /// running top `k` in the outputs and bubbles every element through it. An entry with
    /// index -1 is empty.
    pub(super) fn topk(
        &mut self,
        v: Value,
        k: i64,
        axis: usize,
        largest: bool,
        bv: BufId,
        bi: BufId,
    ) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let xs = self.ty(x).shape.clone();
        let os = self.ty(v).shape.clone();
        let dtype = self.ty(v).dtype;
        let mut rows = xs.dims().to_vec();
        rows.remove(axis);
        let rows = Shape::new(rows);
        let (r0, r, j) = (
            self.var(DType::I64),
            self.var(DType::I64),
            self.var(DType::I64),
        );
        let (cv, ci) = (self.var(dtype), self.var(DType::I64));
        let (ev, ei, better) = (self.var(dtype), self.var(DType::I64), self.var(DType::Bool));
        let n = self.dim(xs.dim(axis));
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let nan = |e: Expr| op(Op::Ne, vec![e.clone(), e], DType::Bool);
        // cur strictly before entry in the order.
        let before = {
            let (c, e) = (Expr::Var(cv), Expr::Var(ev));
            let strict = op(
                if largest { Op::Gt } else { Op::Lt },
                vec![c.clone(), e.clone()],
                DType::Bool,
            );
            // Equal in the order: ties go to the lower index (an entry pushed down the list
            // meets entries with higher indices).
            let tie = if dtype.is_float() {
                let both_nan = op(Op::And, vec![nan(c.clone()), nan(e.clone())], DType::Bool);
                let eq = op(Op::Eq, vec![c.clone(), e.clone()], DType::Bool);
                op(Op::Or, vec![eq, both_nan], DType::Bool)
            } else {
                op(Op::Eq, vec![c.clone(), e.clone()], DType::Bool)
            };
            let lower = op(Op::Lt, vec![Expr::Var(ci), Expr::Var(ei)], DType::Bool);
            let tie_wins = op(Op::And, vec![tie, lower], DType::Bool);
            let strict = if dtype.is_float() {
                let not = |x: Expr| op(Op::Not, vec![x], DType::Bool);
                let nan_wins = if largest {
                    op(Op::And, vec![nan(c), not(nan(e))], DType::Bool)
                } else {
                    op(Op::And, vec![not(nan(c)), nan(e)], DType::Bool)
                };
                op(Op::Or, vec![nan_wins, strict], DType::Bool)
            } else {
                strict
            };
            op(Op::Or, vec![strict, tie_wins], DType::Bool)
        };
        self.nest(&rows, dtype, |l, idx| {
            let mut at = idx[..axis].to_vec();
            at.push(Expr::Var(r));
            at.extend_from_slice(&idx[axis..]);
            let oindex = l.linear(&at, &os);
            let mut xi = idx[..axis].to_vec();
            xi.push(Expr::Var(j));
            xi.extend_from_slice(&idx[axis..]);
            let load = l.expr(x, &xi)?;
            let ld = |buf: BufId| Expr::Load {
                buf,
                index: Box::new(oindex.clone()),
            };
            let mut at0 = idx[..axis].to_vec();
            at0.push(Expr::Var(r0));
            at0.extend_from_slice(&idx[axis..]);
            let oindex0 = l.linear(&at0, &os);
            let sel = |c: Expr, a: Expr, e: Expr, d: DType| op(Op::Select, vec![c, a, e], d);
            let clear = Stmt::Loop {
                var: r0,
                extent: Expr::i64(k),
                mark: Mark::Serial,
                body: vec![Stmt::Store {
                    buf: bi,
                    index: oindex0,
                    value: Expr::i64(-1),
                }],
            };
            let empty = op(Op::Eq, vec![Expr::Var(ei), Expr::i64(-1)], DType::Bool);
            let bubble = Stmt::Loop {
                var: r,
                extent: Expr::i64(k),
                mark: Mark::Serial,
                body: vec![
                    Stmt::Set {
                        var: ev,
                        value: ld(bv),
                    },
                    Stmt::Set {
                        var: ei,
                        value: ld(bi),
                    },
                    Stmt::Set {
                        var: better,
                        value: op(Op::Or, vec![empty, before.clone()], DType::Bool),
                    },
                    Stmt::Store {
                        buf: bv,
                        index: oindex.clone(),
                        value: sel(Expr::Var(better), Expr::Var(cv), Expr::Var(ev), dtype),
                    },
                    Stmt::Store {
                        buf: bi,
                        index: oindex.clone(),
                        value: sel(Expr::Var(better), Expr::Var(ci), Expr::Var(ei), DType::I64),
                    },
                    Stmt::Set {
                        var: cv,
                        value: sel(Expr::Var(better), Expr::Var(ev), Expr::Var(cv), dtype),
                    },
                    Stmt::Set {
                        var: ci,
                        value: sel(Expr::Var(better), Expr::Var(ei), Expr::Var(ci), DType::I64),
                    },
                ],
            };
            let scan = Stmt::Loop {
                var: j,
                extent: n,
                mark: Mark::Serial,
                body: vec![
                    Stmt::Set {
                        var: cv,
                        value: load,
                    },
                    Stmt::Set {
                        var: ci,
                        value: Expr::Var(j),
                    },
                    bubble,
                ],
            };
            Ok(vec![clear, scan])
        })?;
        self.bufs.insert(v, bv);
        self.bufs.insert(Value::new(v.node, 1), bi);
        Ok(())
    }

    pub(super) fn concat(&mut self, v: Value, axis: usize, b: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let ty = self.ty(v);
        let mut offset = Dim::constant(0);
        for &p in node.inputs() {
            let ps = self.ty(p).shape.clone();
            let off = self.dim(&offset);
            self.nest(&ps, ty.dtype, |l, idx| {
                let value = l.expr(p, idx)?;
                let mut at = idx.to_vec();
                at[axis] = at[axis].clone() + off;
                let index = l.linear(&at, &ty.shape);
                Ok(vec![Stmt::Store {
                    buf: b,
                    index,
                    value,
                }])
            })?;
            offset = offset
                .add(ps.dim(axis))
                .map_err(|e| Unsupported(e.to_string()))?;
        }
        self.bufs.insert(v, b);
        Ok(())
    }
}
