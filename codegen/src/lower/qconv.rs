//! Quantized convolutions: a 2-D `qconv` (u8 images, one group) as one `qconv2d` call an
//! image, its epilogue per output channel.

use super::epilogue::Chain;
use super::*;

impl Lowering<'_> {
    /// Whether `qconv` `v` becomes `qconv2d` calls (so that an epilogue may apply).
    pub(super) fn qconv_calls(&self, v: Value) -> bool {
        let node = self.g.node(v.node);
        let Op::Qconv { groups, .. } = node.op() else {
            return false;
        };
        *groups == 1
            && self.ty(node.inputs()[0]).dtype == DType::U8
            && self.ty(node.inputs()[0]).shape.rank() == 4
    }

    /// `qconv` `v` into `out`, applying `chain` (only where [`Lowering::qconv_calls`]).
    pub(super) fn qconv(&mut self, v: Value, out: BufId, chain: Option<&Chain>) -> Result<()> {
        self.qconv_into(v, out, chain, false, None)
    }

    /// `qconv` `v` (its chain's end) stored blocked: into the buffer of `views`' blocked
    /// value, which the reshape and transpose it names (see [`Lowering::blocked_result`]) are
    /// then computed as — as bytes with `tail` (the values from the chain's end to the
    /// quantizer's bytes, and its zero point: [`Lowering::byte_tail`]).
    pub(super) fn qconv_blocked(
        &mut self,
        v: Value,
        chain: Option<&Chain>,
        (reshape, blocked): (Value, Value),
        tail: Option<(Vec<Value>, f64)>,
    ) -> Result<()> {
        let end = chain.map_or(v, |c| c.end);
        let inner = chain.map_or(&[][..], |c| &c.inner[..]);
        let (tail, z) = match tail {
            Some((tail, z)) => (tail, Some(z)),
            None => (Vec::new(), None),
        };
        let inside: Vec<Value> = [end, reshape]
            .iter()
            .chain(inner)
            .chain(&tail)
            .copied()
            .collect();
        self.computed_as(v, blocked, &inside, |l, b| {
            l.qconv_into(v, b, chain, true, z)
        })
    }

    /// `qconv` `v` stored as the bytes `bytes` its quantizer makes of the chain's end (`tail`:
    /// the values on the way and the zero point, [`Lowering::byte_tail`]): `qconv2d_u8`.
    pub(super) fn qconv_bytes(
        &mut self,
        v: Value,
        chain: Option<&Chain>,
        bytes: Value,
        (tail, z): (Vec<Value>, f64),
    ) -> Result<()> {
        let inner = chain.map_or(&[][..], |c| &c.inner[..]);
        let inside: Vec<Value> = inner.iter().chain(&tail).copied().collect();
        self.computed_as(v, bytes, &inside, |l, b| {
            l.qconv_into(v, b, chain, false, Some(z))
        })
    }

    /// `qconv` `v` into `out` (blocked with `yb`), applying `chain`; as bytes with zero point
    /// `z` where given (`qconv2d_u8`).
    fn qconv_into(
        &mut self,
        v: Value,
        out: BufId,
        chain: Option<&Chain>,
        yb: bool,
        z: Option<f64>,
    ) -> Result<()> {
        if !self.qconv_calls(v) {
            return unsupported("a quantized conv other than 2-D, u8 and of one group");
        }
        let node = self.g.node(v.node);
        let Op::Qconv {
            stride,
            dilation,
            pad_low,
            ..
        } = node.op().clone()
        else {
            return unsupported("called on a qconv");
        };
        let ins = node.inputs().to_vec();
        // An image the layout pass left blocked is read as it is (no copy back to planes).
        let blocked = self.blocked_image(ins[0]);
        let mut bufs = Vec::new();
        for (i, &x) in ins.iter().enumerate() {
            bufs.push(match (i, blocked) {
                (0, Some(b)) => self.dense(b)?,
                _ => self.dense(x)?,
            });
        }
        let (xs, ws, ys) = (
            self.ty(ins[0]).shape.clone(),
            self.ty(ins[1]).shape.clone(),
            self.ty(v).shape.clone(),
        );
        let batch = Shape::new(vec![xs.dim(0).clone()]);
        let image = |s: &Shape| -> Result<Dim> {
            s.dim(1)
                .mul(s.dim(2))
                .and_then(|d| d.mul(s.dim(3)))
                .map_err(|e| Unsupported(e.to_string()))
        };
        let (xi, mut yi) = (image(&xs)?, image(&ys)?);
        if yb {
            // Whole blocks of 16 channels.
            let o = ys
                .dim(1)
                .as_const()
                .ok_or(Unsupported("a blocked result's channels".into()))?;
            let lanes = Dim::constant((o + BLOCK - 1) / BLOCK * BLOCK);
            yi = lanes
                .mul(ys.dim(2))
                .and_then(|d| d.mul(ys.dim(3)))
                .map_err(|e| Unsupported(e.to_string()))?;
        }
        self.nest(&batch, DType::I64, |l, idx| {
            let n = idx[0].clone();
            let (x_off, c_off) = (n.clone() * l.dim(&xi), n * l.dim(&yi));
            let epilogue = Chain::of(chain, &Expr::i64(0), &c_off);
            let mut operands = vec![
                Some((bufs[0], x_off)),
                Some((bufs[1], Expr::i64(0))),
                None,
                Some((bufs[2], Expr::i64(0))),
                Some((out, c_off)),
            ];
            operands.extend(epilogue.operands());
            let mut ints: Vec<Expr> = [
                xs.dim(1),
                ws.dim(0),
                xs.dim(2),
                xs.dim(3),
                ys.dim(2),
                ys.dim(3),
                ws.dim(2),
                ws.dim(3),
            ]
            .iter()
            .map(|d| l.dim(d))
            .collect();
            ints.extend(
                [
                    stride[0],
                    stride[1],
                    dilation[0],
                    dilation[1],
                    pad_low[0],
                    pad_low[1],
                    if blocked.is_some() { BLOCK } else { 0 },
                    if yb { BLOCK } else { 0 },
                ]
                .map(Expr::i64),
            );
            ints.push(Expr::i64(epilogue.act));
            let mut scalars = epilogue.scalars();
            let routine = match z {
                Some(z) => {
                    scalars.push(Expr::Float(z, DType::F32));
                    "qconv2d_u8"
                }
                None => "qconv2d",
            };
            let call = kernel::Call {
                routine: routine.into(),
                operands,
                ints,
                scalars,
                result: None,
            };
            Ok(vec![Stmt::Call(Box::new(call))])
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }

    /// The reshape and transpose that make planar result `y` (`[n, o, h, w]`, `o` a constant
    /// multiple of 16) blocked (`[n, o/16, h, w, 16]`) as the layout pass writes them, when they are
    /// all that read it (and it and the reshape are no outputs).
    pub(super) fn blocked_result(&self, y: Value) -> Option<(Value, Value)> {
        let g = self.g;
        let outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
        let only = |v: Value| -> Option<NodeId> {
            let once = !outputs.contains(&v) && self.reads.get(&v) == Some(&1);
            match self.readers(v)[..] {
                [n] if once => Some(n),
                _ => None,
            }
        };
        let r = only(y)?;
        let Op::Reshape { .. } = g.node(r).op() else {
            return None;
        };
        let rv = Value::new(r, 0);
        let t = only(rv)?;
        let Op::Transpose { perm } = g.node(t).op() else {
            return None;
        };
        let tv = Value::new(t, 0);
        let (ys, ts) = (&self.ty(y).shape, &self.ty(tv).shape);
        let fits = perm[..] == [0, 1, 3, 4, 2]
            && ys.rank() == 4
            && ys.dim(1).as_const().is_some()
            && ts.rank() == 5
            && ts.dim(4).as_const() == Some(BLOCK)
            && self.ty(rv).shape.dim(2).as_const() == Some(BLOCK)
            && ys.dim(0) == ts.dim(0)
            && ys.dim(2) == ts.dim(2)
            && ys.dim(3) == ts.dim(3)
            && ts.dim(1).mul(ts.dim(4)).ok().as_ref() == Some(ys.dim(1));
        fits.then_some((rv, tv))
    }

    /// The blocked image (`[n, c/16, h, w, 16]`, every lane a channel) that planar image `x`
    /// (`[n, c, h, w]`) views, as the layout pass leaves it: `reshape(transpose(b, [0, 1, 4,
    /// 2, 3]))`.
    fn blocked_image(&self, x: Value) -> Option<Value> {
        let g = self.g;
        let Op::Reshape { .. } = g.node(x.node).op() else {
            return None;
        };
        let t = g.node(x.node).inputs()[0];
        let Op::Transpose { perm } = g.node(t.node).op() else {
            return None;
        };
        let b = g.node(t.node).inputs()[0];
        let (xs, bs) = (&self.ty(x).shape, &self.ty(b).shape);
        let fits = perm[..] == [0, 1, 4, 2, 3]
            && xs.rank() == 4
            && bs.rank() == 5
            && bs.dim(4).as_const() == Some(BLOCK)
            && xs.dim(0) == bs.dim(0)
            && xs.dim(2) == bs.dim(2)
            && xs.dim(3) == bs.dim(3)
            && bs.dim(1).mul(bs.dim(4)).ok().as_ref() == Some(xs.dim(1));
        fits.then_some(b)
    }
}

/// The blocked layout's channels a block.
const BLOCK: i64 = 16;
