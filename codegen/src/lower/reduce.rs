//! Reductions over axes (f32 sums accumulate in f64) and values materialized into buffers.

use super::*;

impl Lowering<'_> {
    pub(super) fn reduce(&mut self, v: Value, op: &Op, axes: &[i64], b: BufId) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let from = self.ty(x).shape.clone();
        let ty = self.ty(v);
        let dtype = ty.dtype;
        let (init, step) = match op {
            Op::ReduceSum { .. } => (constant(0.0, dtype), Op::Add),
            Op::ReduceProd { .. } => (constant(1.0, dtype), Op::Mul),
            Op::ReduceMax { .. } => (extreme(dtype, false), Op::Max),
            _ => (extreme(dtype, true), Op::Min),
        };
        let (acc_ty, init) = accumulator(&step, dtype, init);
        let wide = acc_ty != dtype;
        let acc = self.var(acc_ty);
        self.nest(&ty.shape, dtype, |l, idx| {
            let mut full = Vec::new();
            let mut loops = Vec::new();
            let mut kept = idx.iter();
            for (a, d) in from.dims().iter().enumerate() {
                if axes.contains(&(a as i64)) {
                    let r = l.var(DType::I64);
                    loops.push((r, l.dim(d)));
                    full.push(Expr::Var(r));
                } else {
                    full.push(kept.next().expect("reduce keeps the other axes").clone());
                }
            }
            let mut x = l.expr(x, &full)?;
            if wide {
                x = cast(x, DType::F64);
            }
            let update = Expr::Op {
                op: step,
                args: vec![Expr::Var(acc), x],
                dtype: acc_ty,
            };
            let index = l.linear(idx, &ty.shape);
            let value = if wide {
                cast(Expr::Var(acc), dtype)
            } else {
                Expr::Var(acc)
            };
            Ok(accumulate(
                acc,
                init,
                loops,
                update,
                Stmt::Store {
                    buf: b,
                    index,
                    value,
                },
            ))
        })?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// Makes sure `v` lives in a buffer when it is more than a view of one (a contraction
    /// reads each operand element many times).
    pub(super) fn materialized(&mut self, v: Value) -> Result<()> {
        let mut s = v;
        loop {
            if self.bufs.contains_key(&s) {
                return Ok(());
            }
            let node = self.g.node(s.node);
            if is_view(node.op()) {
                s = node.inputs()[0];
                continue;
            }
            if matches!(node.op(), Op::Constant { .. }) {
                return Ok(());
            }
            break;
        }
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), self.ty(s), BufKind::Scratch)?;
        self.elementwise_nest(s, b)
    }
}
