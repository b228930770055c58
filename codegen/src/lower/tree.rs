//! Tree ensembles: `tree_walk` becomes one call of the `tree_walk` routine over dense
//! operands (each row walks each tree once), and a check of what it returns (malformed
//! tables end the kernel with INDEX_OUT_OF_RANGE).

use super::*;

impl Lowering<'_> {
    /// `v` (a `tree_walk`) computed into `out`.
    pub(super) fn tree_walk(&mut self, v: Value, out: BufId) -> Result<()> {
        let ins = self.g.node(v.node).inputs().to_vec();
        if self.ty(ins[0]).dtype != DType::F32 {
            return unsupported("`tree_walk` over rows that are not f32");
        }
        let mut operands = Vec::with_capacity(ins.len() + 1);
        for &i in &ins {
            operands.push(Some((self.dense(i)?, Expr::i64(0))));
        }
        operands.push(Some((out, Expr::i64(0))));
        let dims = |l: &Self, i: usize, axis: usize| l.ty(ins[i]).shape.dim(axis).clone();
        let (rows, features, trees, nodes) = (
            dims(self, 0, 0),
            dims(self, 0, 1),
            dims(self, 7, 0),
            dims(self, 1, 0),
        );
        let ints = vec![
            self.dim(&rows),
            self.dim(&features),
            self.dim(&trees),
            self.dim(&nodes),
        ];
        let failed = self.var(DType::I64);
        self.k.body.push(Stmt::Call(Box::new(kernel::Call {
            routine: "tree_walk".into(),
            operands,
            ints,
            scalars: Vec::new(),
            result: Some(failed),
        })));
        self.k.body.push(Stmt::Check {
            cond: Expr::Op {
                op: Op::Eq,
                args: vec![Expr::Var(failed), Expr::i64(0)],
                dtype: DType::Bool,
            },
            code: codes::INDEX_OUT_OF_RANGE,
        });
        self.bufs.insert(v, out);
        Ok(())
    }
}
