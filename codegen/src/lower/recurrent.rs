//! Recurrent layers: `lstm`, `gru` and `rnn` become one call of their routine over dense operands
//! (the whole sequence in one call; the routine splits the hidden units over threads itself).

use super::*;

impl Lowering<'_> {
    /// `v` (a recurrent layer's every-step h) and its other results (the last h, and an
    /// LSTM's last c) into `outs`.
    pub(super) fn recurrence(&mut self, v: Value, reverse: bool, outs: &[BufId]) -> Result<()> {
        let node = self.g.node(v.node);
        let routine = node.op().mnemonic();
        let ins = node.inputs().to_vec();
        if self.ty(ins[0]).dtype != DType::F32 {
            return unsupported(format!("`{routine}` that is not f32"));
        }
        let mut operands = Vec::with_capacity(8);
        for &i in &ins {
            operands.push(Some((self.dense(i)?, Expr::i64(0))));
        }
        // The weights packed, when they are constant: `prepack` fills this in.
        operands.insert(2, None);
        operands.extend(outs.iter().map(|&b| Some((b, Expr::i64(0)))));
        let xw = self.ty(ins[0]).shape.clone();
        let hidden = self.ty(ins[1]).shape.dim(0).clone();
        let mut ints = vec![
            self.dim(xw.dim(0)),
            self.dim(xw.dim(1)),
            self.dim(&hidden),
            Expr::i64(i64::from(reverse)),
        ];
        if let Op::Gru {
            linear_before_reset,
            ..
        } = node.op()
        {
            ints.push(Expr::i64(i64::from(*linear_before_reset)));
        }
        self.k.body.push(Stmt::Call(Box::new(kernel::Call {
            routine: routine.into(),
            operands,
            ints,
            scalars: Vec::new(),
            result: None,
        })));
        for (i, &b) in outs.iter().enumerate() {
            self.bufs.insert(Value::new(v.node, i as u32), b);
        }
        Ok(())
    }
}
