//! Recurrent layers — `lstm`, `gru` and `rnn` — and `dynamic_quantize` become one call of their
//! routine over dense operands (the whole sequence, the whole tensor, in one call; the
//! routines split their work over threads themselves).

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

    /// `dynamic_quantize` of `v`'s operand into `outs` (the values, the scale, the zero
    /// point): one call over the whole tensor.
    pub(super) fn dynamic_quantize(&mut self, v: Value, outs: [BufId; 3]) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let shape = self.ty(x).shape.clone();
        let n = (shape.dims().iter()).fold(Expr::i64(1), |n, d| n * self.dim(d));
        let mut operands = vec![Some((self.dense(x)?, Expr::i64(0)))];
        operands.extend(outs.iter().map(|&b| Some((b, Expr::i64(0)))));
        self.k.body.push(Stmt::Call(Box::new(kernel::Call {
            routine: "dynamic_quantize".into(),
            operands,
            ints: vec![n],
            scalars: Vec::new(),
            result: None,
        })));
        for (i, &b) in outs.iter().enumerate() {
            self.bufs.insert(Value::new(v.node, i as u32), b);
        }
        Ok(())
    }
}
