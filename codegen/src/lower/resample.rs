//! Interpolation along an axis (`resample`): the indices checked once, then f32 data as
//! `resample` routine calls over runs of output positions, in parallel; other dtypes as
//! loops summing each output's taps.

use super::*;

impl Lowering<'_> {
    /// `v` (a `resample`) computed into `out`.
    pub(super) fn resample(&mut self, v: Value, out: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::Resample { axis } = node.op() else {
            unreachable!("called on resample")
        };
        let axis = *axis as usize;
        let ins = node.inputs().to_vec();
        let (x, idx, w) = (ins[0], ins[1], ins[2]);
        let (xb, ib, wb) = (self.dense(x)?, self.dense(idx)?, self.dense(w)?);
        let xs = self.ty(x).shape.clone();
        let is = self.ty(idx).shape.clone();
        let taps = is.dim(1).as_const().unwrap_or(0);
        let product =
            |l: &mut Self, dims: &[Dim]| dims.iter().fold(Expr::i64(1), |acc, d| acc * l.dim(d));
        let outer = product(self, &xs.dims()[..axis]);
        let inner = product(self, &xs.dims()[axis + 1..]);
        let n = self.dim(xs.dim(axis));
        let m = self.dim(is.dim(0));
        // Every index inside the axis, before anything reads through one.
        let k = self.var(DType::I64);
        let at = Expr::Load {
            buf: ib,
            index: Box::new(Expr::Var(k)),
        };
        self.k.body.push(Stmt::Loop {
            var: k,
            extent: m.clone() * Expr::i64(taps),
            mark: Mark::Serial,
            body: vec![gather::in_range(at, n.clone())],
        });
        let dtype = self.ty(x).dtype;
        if dtype != DType::F32 {
            return self.resample_loops(v, axis, (ib, wb), taps, out);
        }
        // Runs of output positions for the threads: eight where there are that many.
        let runs = is.dim(0).as_const().map_or(1, |m| m.clamp(1, 8));
        let per = match is.dim(0).as_const() {
            Some(m) => Expr::i64((m + runs - 1) / runs),
            None => m.clone(),
        };
        let r = self.var(DType::I64);
        let p0 = Expr::Var(r) * per.clone();
        let left = m + p0.clone() * Expr::i64(-1);
        let pn = Expr::index_op(Op::Min, per, left);
        let call = Stmt::Call(Box::new(kernel::Call {
            routine: "resample".into(),
            operands: vec![
                Some((xb, Expr::i64(0))),
                Some((ib, Expr::i64(0))),
                Some((wb, Expr::i64(0))),
                Some((out, Expr::i64(0))),
            ],
            ints: vec![
                outer,
                n,
                self.dim(is.dim(0)),
                inner,
                Expr::i64(taps),
                p0,
                pn,
            ],
            scalars: Vec::new(),
            result: None,
        }));
        self.k.body.push(Stmt::Loop {
            var: r,
            extent: Expr::i64(runs),
            mark: Mark::Parallel,
            body: vec![call],
        });
        self.bufs.insert(v, out);
        Ok(())
    }

    /// `resample` of other float dtypes: each output the sum of its taps in order, each
    /// product and sum in the dtype.
    fn resample_loops(
        &mut self,
        v: Value,
        axis: usize,
        (ib, wb): (BufId, BufId),
        taps: i64,
        out: BufId,
    ) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let dtype = self.ty(x).dtype;
        let os = self.ty(v).shape.clone();
        let (t, it, acc) = (self.var(DType::I64), self.var(DType::I64), self.var(dtype));
        self.nest(&os, dtype, |l, idx| {
            let tap = idx[axis].clone() * Expr::i64(taps) + Expr::Var(t);
            let mut full = idx.to_vec();
            full[axis] = Expr::Var(it);
            let load = l.expr(x, &full)?;
            let weight = Expr::Load {
                buf: wb,
                index: Box::new(tap.clone()),
            };
            let product = Expr::Op {
                op: Op::Mul,
                args: vec![weight, load],
                dtype,
            };
            let sum = Expr::Op {
                op: Op::Add,
                args: vec![Expr::Var(acc), product.clone()],
                dtype,
            };
            let first = Expr::Op {
                op: Op::Eq,
                args: vec![Expr::Var(t), Expr::i64(0)],
                dtype: DType::Bool,
            };
            Ok(vec![
                Stmt::Set {
                    var: acc,
                    value: constant(0.0, dtype),
                },
                Stmt::Loop {
                    var: t,
                    extent: Expr::i64(taps),
                    mark: Mark::Serial,
                    body: vec![
                        Stmt::Set {
                            var: it,
                            value: Expr::Load {
                                buf: ib,
                                index: Box::new(tap),
                            },
                        },
                        Stmt::Set {
                            var: acc,
                            value: Expr::Op {
                                op: Op::Select,
                                args: vec![first, product, sum],
                                dtype,
                            },
                        },
                    ],
                },
                Stmt::Store {
                    buf: out,
                    index: l.linear(idx, &os),
                    value: Expr::Var(acc),
                },
            ])
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }
}
