//! Fused epilogues: the elementwise steps after a convolution that its routine applies as it
//! stores each output (a folded batch norm, a bias, a residual add, ReLU or Clip, a QDQ
//! model's quantize-dequantize pairs before and after those), so that
//! the convolution writes the last step's value, once, instead of a buffer that a vector
//! loop then reads back.

use super::*;

/// The steps of an epilogue, in the order a routine applies them: `x·scale`, `·scale2` (only
/// after a pair that follows the scale), `+ shift`, `+ res`, `max(·, lo)`, `min(·, hi)`, then
/// a sigmoid, tanh, GELU, SiLU, HardSwish or HardSigmoid (and a quantize-dequantize pair
/// before them all, or after the scale, and after them all) — or the shift first of all
/// (`Chain::shift_first`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Scale,
    Scale2,
    Shift,
    Res,
    Lo,
    Hi,
}

/// A chain of elementwise steps from a convolution's result to `end`, each a value read
/// only by the next: per-channel buffers for scale and shift (indexed by the output
/// channel), a residual laid out as the result from some offset (a step's rows of a sequence's
/// input projection; all inputs of the kernel), constant clamps.
pub(super) struct Chain {
    pub(super) end: Value,
    /// The values between the start and the end (computed by no one).
    pub(super) inner: Vec<Value>,
    scale: Option<BufId>,
    shift: Option<BufId>,
    /// The residual and the offset of its element 0 from the result's.
    res: Option<(BufId, i64)>,
    /// A second scale, after the pair that follows the scale (a batch norm between a
    /// QOperator requantizer and the next quantizer).
    scale2: Option<BufId>,
    lo: f64,
    hi: f64,
    /// Whether scale and shift are per column (a product's last axis) rather than per row.
    cols: bool,
    /// The activation last: 0 none, 1 sigmoid, 2 tanh, 3 GELU, 4 SiLU, 5 HardSwish, 6
    /// HardSigmoid, 7 and 8 HardSwish as `x·relu6(x + 3)` divided by 6 or times 1/6, 9 GELU
    /// and its ½.
    act: i64,
    /// A quantize-dequantize pair first (or right after the scale) and last: scale, zero
    /// point, the type's range, the dequantizer's scale.
    pre: Option<[f64; 5]>,
    pre_after_scale: bool,
    /// Whether the shift came first, before the scale (QLinearConv's and QGemm's integer
    /// bias before the requantizer's scale).
    shift_first: bool,
    post: Option<[f64; 5]>,
}

/// Which axis of the result the per-channel operands of an epilogue run along.
pub(super) enum Along {
    /// Axis 1, a convolution's output channel: the routine's rows.
    Channels,
    /// The last axis, a product's columns.
    Columns,
    /// Axes 1 and 4 of a channel-blocked image `[N, C/16, H, W, 16]`: channel `16·cb + i`,
    /// which the routine indexes itself (operands from channel 0).
    Blocked,
}

impl Chain {
    /// The call's epilogue: per-channel operands from channel `ch` (column 0 for products'
    /// columns), the residual at `at` (the call's output offset).
    pub(super) fn at(&self, ch: &Expr, at: &Expr) -> kernel::Epilogue {
        kernel::Epilogue {
            scale: self.scale.map(|b| (b, ch.clone())),
            shift: self.shift.map(|b| (b, ch.clone())),
            res: self.res.map(|(b, off)| (b, at.clone() + Expr::i64(off))),
            scale2: self.scale2.map(|b| (b, ch.clone())),
            lo: self.lo,
            hi: self.hi,
            cols: self.cols,
            act: self.act,
            pre: self.pre,
            pre_after_scale: self.pre_after_scale,
            shift_first: self.shift_first,
            post: self.post,
        }
    }

    /// Whether it adds a residual.
    pub(super) fn has_res(&self) -> bool {
        self.res.is_some()
    }

    /// The epilogue of `chain` at `ch` and `at`, or none.
    pub(super) fn of(chain: Option<&Chain>, ch: &Expr, at: &Expr) -> kernel::Epilogue {
        chain.map(|c| c.at(ch, at)).unwrap_or_default()
    }
}

impl Lowering<'_> {
    /// The longest chain of steps after `v` (an f32 value with axes batch, channel, ...) that
    /// an epilogue applies exactly as the elementwise ops compute them: `None` when not
    /// even the first step fuses. Every value before the chain's end is read once, by the
    /// next step, and is no output; operands must already live in buffers.
    pub(super) fn epilogue_chain(&mut self, v: Value, along: Along) -> Option<Chain> {
        let g = self.g;
        let shape = self.ty(v).shape.clone();
        if self.ty(v).dtype != DType::F32 || shape.rank() < 2 {
            return None;
        }
        if matches!(along, Along::Blocked) && shape.rank() != 5 {
            return None;
        }
        // Fresh index variables for every axis (0 for unit ones, as in loop nests); the
        // operands' values at them say whether they are per channel, laid out as the
        // result, or constant.
        let idx: Vec<Expr> = shape
            .dims()
            .iter()
            .map(|d| match d.as_const() {
                Some(1) => Expr::i64(0),
                _ => Expr::Var(self.var(DType::I64)),
            })
            .collect();
        let layout = self.linear(&idx, &shape);
        // The index of a per-channel operand at the result's index.
        let channel = match along {
            Along::Channels => idx[1].clone(),
            Along::Columns => idx[shape.rank() - 1].clone(),
            Along::Blocked => {
                let zero = Expr::i64(0);
                let at = [
                    zero.clone(),
                    idx[1].clone(),
                    zero.clone(),
                    zero,
                    idx[4].clone(),
                ];
                let mut per = shape.dims().to_vec();
                per[0] = Dim::constant(1);
                per[2] = Dim::constant(1);
                per[3] = Dim::constant(1);
                self.linear(&at, &Shape::new(per))
            }
        };
        let channels = match along {
            Along::Channels => shape.dim(1).clone(),
            Along::Columns => shape.dim(shape.rank() - 1).clone(),
            Along::Blocked => shape.dim(1).mul(shape.dim(4)).ok()?,
        };
        let outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
        let mut chain = Chain {
            end: v,
            inner: Vec::new(),
            scale: None,
            shift: None,
            res: None,
            scale2: None,
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            cols: !matches!(along, Along::Channels),
            act: 0,
            pre: None,
            pre_after_scale: false,
            shift_first: false,
            post: None,
        };
        let mut last: Option<Step> = None;
        let mut at = v;
        loop {
            // A pair first, right after the scale or right after a first shift is `pre`; any
            // other is the last step (not a scale by its quantizer's power-of-two factor).
            if let Some((q, end, inner)) = self.fake_quant(at, &outputs) {
                // Right after a first shift (a bias before a requantizer whose scale went
                // into the weights): the shift first, the pair before the scale.
                let first_shift =
                    last == Some(Step::Shift) && chain.inner.len() == 1 && !chain.shift_first;
                let placed = matches!(last, None | Some(Step::Scale)) || first_shift;
                if chain.pre.is_some() || !placed {
                    break;
                }
                chain.pre = Some(q);
                chain.pre_after_scale = last == Some(Step::Scale);
                if first_shift {
                    chain.shift_first = true;
                    last = None;
                }
                chain.inner.extend(inner);
                chain.end = end;
                at = end;
                continue;
            }
            if let Some((act, end, inner)) = self.activation(at, &outputs) {
                chain.act = act;
                chain.end = end;
                chain.inner.extend(inner);
                break;
            }
            if outputs.contains(&at) || self.reads.get(&at).copied().unwrap_or(0) != 1 {
                break;
            }
            // The one node reading `at`.
            let Some(&user) = self
                .order
                .iter()
                .find(|&&id| g.node(id).inputs().contains(&at))
            else {
                break;
            };
            let node = g.node(user);
            let next = Value::new(user, 0);
            let args = node.inputs();
            if node.types().len() != 1 || node.types()[0].dtype != DType::F32 {
                break;
            }
            if self.ty(next).shape != shape {
                break;
            }
            // A sigmoid or tanh ends the chain.
            let act = match node.op() {
                Op::Sigmoid => 1,
                Op::Tanh => 2,
                _ => 0,
            };
            if act != 0 && args == [at] {
                chain.act = act;
                chain.inner.push(at);
                chain.end = next;
                break;
            }
            if args.len() != 2 {
                break;
            }
            let other = if args[0] == at { args[1] } else { args[0] };
            if other == at {
                break;
            }
            // Only parameters and constants (seen through views) are there to read when the
            // routine runs; constants get their buffers now.
            let mut source = other;
            while is_view(g.node(source.node).op()) {
                source = g.node(source.node).inputs()[0];
            }
            // A scalar computed in the kernel (a dynamic quantizer's scale) is one value for
            // every channel: filled into a buffer before the call.
            let computed = match g.node(source.node).op() {
                Op::Param { .. } => false,
                Op::Constant { .. } => {
                    if self.constant(source.node).is_err() {
                        break;
                    }
                    false
                }
                _ if self.ty(source).shape.rank() == 0 => true,
                _ => break,
            };
            let Ok(e) = self.expr(other, &idx) else {
                break;
            };
            if computed {
                let varying = |w: VarId| idx.contains(&Expr::Var(w));
                if kernel::recognize::mentions(&e, &varying)
                    || !matches!(node.op(), Op::Mul | Op::Add)
                {
                    break;
                }
            }

            let input = |b: &BufId| self.k.bufs[*b].kind == BufKind::Input;
            let per_channel = match &e {
                Expr::Load { buf, index } if **index == channel && input(buf) => Some(*buf),
                _ => None,
            };
            let laid_out = match &e {
                Expr::Load { buf, index } if **index == layout && input(buf) => Some((*buf, 0)),
                Expr::Load { buf, index } if input(buf) => {
                    offset_from(index, &layout, &idx, &shape).map(|off| (*buf, off))
                }
                _ => None,
            };
            let constant = match e {
                Expr::Float(c, DType::F32) => Some(c),
                _ => None,
            };
            // Stands for the buffer filled below (made once the step is known to fit).
            let per_channel = if computed {
                Some(BufId::MAX)
            } else {
                per_channel
            };
            // A scale right after the pair that follows the scale: the second scale.
            let after_pair = last == Some(Step::Scale) && chain.pre_after_scale;
            let step = match (node.op(), per_channel, laid_out, constant) {
                (Op::Mul, Some(_), _, _) | (Op::Mul, None, None, Some(_)) if after_pair => {
                    Step::Scale2
                }
                (Op::Mul, Some(_), _, _) | (Op::Mul, None, None, Some(_)) => Step::Scale,
                (Op::Add, Some(_), _, _) | (Op::Add, None, None, Some(_)) => Step::Shift,
                (Op::Add, _, Some(_), _) => Step::Res,
                (Op::Max, _, _, Some(_)) => Step::Lo,
                (Op::Min, _, _, Some(_)) => Step::Hi,
                _ => break,
            };
            // A scale right after a first shift (nothing before it): the shift goes first.
            let shift_first = step == Step::Scale
                && last == Some(Step::Shift)
                && chain.inner.len() == 1
                && chain.pre.is_none();
            if !shift_first && (last >= Some(step) || chain.shift_first && step == Step::Shift) {
                // Out of the order the routine applies them in.
                break;
            }
            // A scale or shift by one constant (a batch norm whose statistics are all alike):
            // per channel, every channel the same.
            let per_channel = match (per_channel, constant, step) {
                (Some(_), _, _) if computed => {
                    let Some(b) = self.filled_buffer(&e, &channels) else {
                        break;
                    };
                    Some(b)
                }
                (None, Some(c), Step::Scale | Step::Scale2 | Step::Shift) => {
                    let Some(b) = self.splat_buffer(c, std::slice::from_ref(&channels)) else {
                        break;
                    };
                    Some(b)
                }
                (p, ..) => p,
            };
            match step {
                Step::Scale => {
                    chain.scale = per_channel;
                    chain.shift_first |= shift_first;
                }
                Step::Scale2 => chain.scale2 = per_channel,
                Step::Shift => chain.shift = per_channel,
                Step::Res => chain.res = laid_out,
                Step::Lo => chain.lo = constant.unwrap_or(f64::NEG_INFINITY),
                Step::Hi => chain.hi = constant.unwrap_or(f64::INFINITY),
            }
            last = Some(step);
            chain.inner.push(at);
            chain.end = next;
            at = next;
        }
        if let Some((q, end, inner)) = self.fake_quant(chain.end, &outputs) {
            chain.post = Some(q);
            chain.inner.extend(inner);
            chain.end = end;
        }
        (chain.end != v).then_some(chain)
    }

    /// The quantize-dequantize pair after `x` (an f32 value) as the importer writes ONNX's
    /// QuantizeLinear then DequantizeLinear of one zero point: `x / s` (or `x · (1/s)` where
    /// `s` is a power of two), `round`, `+ z` (absent for 0), a conversion to u8 or i8 and
    /// back, `− z` (absent for 0), `· d` (absent where the optimizer moved it into the next
    /// product's weights), each value read once, by the next, and no output. Its scale, zero
    /// point, the type's range and the dequantizer's scale (see
    /// `kernel::routines::epilogue::Quant`), its end and the values in it.
    fn fake_quant(&self, x: Value, outputs: &[Value]) -> Option<([f64; 5], Value, Vec<Value>)> {
        let g = self.g;
        if self.ty(x).dtype != DType::F32 {
            return None;
        }
        // `x / s`, or `x · 2^-e` (what the simplifier makes of a division by 2^e: the same
        // bits), or neither where the scale came before (a QOperator requantization's
        // `round(x · m)` after its product's `· m`: a division by 1).
        let (div, divided) = self.sole_reader(x, outputs)?;
        let &[num, den] = g.node(div).inputs() else {
            return self.fake_quant_rounded(x, 1.0, outputs);
        };
        let s = match g.node(div).op() {
            Op::Div if num == x && den != x => scalar_value(g, den)?,
            Op::Mul => {
                let r = scalar_value(g, other_operand(g, div, x)?)?;
                let s = 1.0 / r;
                // A power of two (of an f32's exponent range) has an exact reciprocal.
                let two = r > 0.0 && r.is_finite() && (r.log2().fract() == 0.0);
                if !two || (s as f32).is_infinite() || s as f32 == 0.0 {
                    return None;
                }
                s
            }
            _ => return None,
        };
        if !(s > 0.0 && s.is_finite() && f64::from(s as f32) == s) {
            return None;
        }
        let (q, end, mut inner) = self.fake_quant_rounded(divided, s, outputs)?;
        inner.insert(0, x);
        Some((q, end, inner))
    }

    /// [`Lowering::fake_quant`] from `divided`, `x / s` (or `x` itself, `s` 1): the rest of
    /// the pair, from its `round`.
    fn fake_quant_rounded(
        &self,
        divided: Value,
        s: f64,
        outputs: &[Value],
    ) -> Option<([f64; 5], Value, Vec<Value>)> {
        let g = self.g;
        let shape = &self.ty(divided).shape;
        let like = |v: Value, d: DType| self.ty(v).shape == *shape && self.ty(v).dtype == d;
        let reader = |v: Value| self.sole_reader(v, outputs);
        if !like(divided, DType::F32) {
            return None;
        }
        let (round, rounded) = reader(divided)?;
        if !matches!(g.node(round).op(), Op::Round) || !like(rounded, DType::F32) {
            return None;
        }
        let mut inner = vec![divided, rounded];
        // `+ z`, where the zero point is not 0.
        let (mut next, mut shifted) = reader(rounded)?;
        let mut z = 0.0;
        if matches!(g.node(next).op(), Op::Add) && like(shifted, DType::F32) {
            z = scalar_value(g, other_operand(g, next, rounded)?)?;
            inner.push(shifted);
            (next, shifted) = reader(shifted)?;
        }
        let narrow = g.node(next).types()[0].dtype;
        let (lo, hi) = match narrow {
            DType::U8 => (0.0, 255.0),
            DType::I8 => (-128.0, 127.0),
            _ => return None,
        };
        let point = z.fract() == 0.0 && (lo..=hi).contains(&z);
        if !matches!(g.node(next).op(), Op::Cast { .. }) || !like(shifted, narrow) || !point {
            return None;
        }
        inner.push(shifted);
        let (mut back, mut wide) = reader(shifted)?;
        // Through a wider integer first (i16 or i32: exact).
        if matches!(g.node(back).op(), Op::Cast { .. })
            && (like(wide, DType::I32) || like(wide, DType::I16))
        {
            inner.push(wide);
            (back, wide) = reader(wide)?;
        }
        if !matches!(g.node(back).op(), Op::Cast { .. }) || !like(wide, DType::F32) {
            return None;
        }
        let mut end = wide;
        // `− z` (the zero point second), where it is not 0.
        if z != 0.0 {
            let (sub, less) = reader(end)?;
            let &[p, q] = g.node(sub).inputs() else {
                return None;
            };
            let fits = matches!(g.node(sub).op(), Op::Sub) && p == end && q != end;
            if !fits || scalar_value(g, q)? != z || !like(less, DType::F32) {
                return None;
            }
            inner.push(end);
            end = less;
        }
        // `· d`, the dequantizer's scale (1 where the optimizer moved it into the next
        // product's weights).
        let mut d = 1.0;
        if let Some((mul, product)) = reader(end) {
            let by = other_operand(g, mul, end).and_then(|c| scalar_value(g, c));
            if let (Op::Mul, Some(c)) = (g.node(mul).op(), by) {
                if c.is_finite() && f64::from(c as f32) == c && like(product, DType::F32) {
                    d = c;
                    inner.push(end);
                    end = product;
                }
            }
        }
        Some(([s, z, lo, hi, d], end, inner))
    }

    /// A scratch f32 buffer of `n` elements, each the uniform `e`, filled by a loop now (before
    /// the call that reads it).
    fn filled_buffer(&mut self, e: &Expr, n: &Dim) -> Option<BufId> {
        let ty = TensorType::new(DType::F32, Shape::new(vec![n.clone()]));
        let name = format!("t{}", self.k.bufs.len());
        let b = self.buf(name, &ty, BufKind::Scratch).ok()?;
        let v = self.var(DType::I64);
        let extent = self.dim(n);
        self.k.body.push(Stmt::Loop {
            var: v,
            extent,
            mark: Mark::Serial,
            body: vec![Stmt::Store {
                buf: b,
                index: Expr::Var(v),
                value: e.clone(),
            }],
        });
        Some(b)
    }

    /// A constant f32 buffer of static `dims`, each element `c`.
    pub(super) fn splat_buffer(&mut self, c: f64, dims: &[Dim]) -> Option<BufId> {
        let sizes: Vec<usize> = (dims.iter())
            .map(|d| usize::try_from(d.as_const()?).ok())
            .collect::<Option<_>>()?;
        let n = sizes.iter().product();
        let t = ir::Tensor::new(sizes, ir::Data::F32(vec![c as f32; n])).ok()?;
        let ty = TensorType::new(DType::F32, Shape::new(dims.to_vec()));
        let name = format!("c{}", self.consts.len());
        let b = self.buf(name, &ty, BufKind::Input).ok()?;
        self.consts.push((b, t));
        Some(b)
    }

    /// The activation an epilogue ends with that starts at `x` and reads it twice (GELU or
    /// SiLU as exporters write them): its code, its end and the values inside it.
    fn activation(&self, x: Value, outputs: &[Value]) -> Option<(i64, Value, Vec<Value>)> {
        if let Some((end, inner)) = self.gelu(x, outputs) {
            // Its ½ too, when nothing before took it in (a quantizer follows).
            let half = |op: &Op| matches!(op, Op::Mul);
            if let Some(h) = self.step_after(end, x, outputs, half, 0.5) {
                let mut inner = inner.to_vec();
                inner.push(end);
                return Some((9, h, inner));
            }
            return Some((3, end, inner.to_vec()));
        }
        if let Some((end, inner)) = self.hardswish(x, outputs) {
            return Some((5, end, inner.to_vec()));
        }
        if let Some((end, inner)) = self.hardsigmoid(x, outputs) {
            return Some((6, end, inner.to_vec()));
        }
        if let Some((act, end, inner)) = self.hardswish_relu6(x, outputs) {
            return Some((act, end, inner.to_vec()));
        }
        let (end, inner) = self.silu(x, outputs)?;
        Some((4, end, inner.to_vec()))
    }

    /// The quantizer storing `end` (a quantized conv's chain's end) as bytes, when that is
    /// how `end` is read: `cast<u8>(round(end) + z)` (the sum optional, `z` a constant), clamps
    /// between them that the conversion's saturation makes no-ops (a maximum with at most 0, a
    /// minimum with at least 255; NaN goes to 0 either way), every value read once, by the
    /// next, and no output but the last. The byte value, the values on the way (`end` first),
    /// and `z`.
    pub(super) fn byte_tail(&self, end: Value) -> Option<(Value, Vec<Value>, f64)> {
        let g = self.g;
        let outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
        let (ty, shape) = (self.ty(end).dtype, self.ty(end).shape.clone());
        let (n, rounded) = self.sole_reader(end, &outputs)?;
        if ty != DType::F32 || !matches!(g.node(n).op(), Op::Round) {
            return None;
        }
        let (mut inner, mut at, mut z) = (vec![end, rounded], rounded, None);
        loop {
            let (n, next) = self.sole_reader(at, &outputs)?;
            let node = g.node(n);
            if node.types().len() != 1 || self.ty(next).shape != shape {
                return None;
            }
            let c = || scalar_value(g, other_operand(g, n, at)?);
            match node.op() {
                Op::Cast { .. } if self.ty(next).dtype == DType::U8 => {
                    return Some((next, inner, z.unwrap_or(0.0)));
                }
                Op::Add if z.is_none() && inner.len() == 2 => z = Some(c()?),
                Op::Max if c()? <= 0.0 => {}
                Op::Min if c()? >= 255.0 => {}
                _ => return None,
            }
            if self.ty(next).dtype != DType::F32 {
                return None;
            }
            inner.push(next);
            at = next;
        }
    }

    /// The nodes reading `v`.
    pub(super) fn readers(&self, v: Value) -> Vec<NodeId> {
        (self.order.iter())
            .copied()
            .filter(|&id| self.g.node(id).inputs().contains(&v))
            .collect()
    }

    /// The one node reading `v` and its value, when `v` is read once and is no output.
    fn sole_reader(&self, v: Value, outputs: &[Value]) -> Option<(NodeId, Value)> {
        if outputs.contains(&v) || self.reads.get(&v) != Some(&1) {
            return None;
        }
        let [n] = self.readers(v)[..] else {
            return None;
        };
        Some((n, Value::new(n, 0)))
    }

    /// The one node reading `v` — which is read once, is no output and has the type of `like`
    /// — when it is an `op` of `v` and the constant `c`.
    fn step_after(
        &self,
        v: Value,
        like: Value,
        outputs: &[Value],
        op: fn(&Op) -> bool,
        c: f64,
    ) -> Option<Value> {
        let g = self.g;
        if self.ty(v) != self.ty(like) {
            return None;
        }
        let (n, next) = self.sole_reader(v, outputs)?;
        let fits = op(g.node(n).op()) && scalar_value(g, other_operand(g, n, v)?) == Some(c);
        fits.then_some(next)
    }

    /// The two nodes reading `x`, when it is read exactly twice and is no output.
    fn read_twice(&self, x: Value, outputs: &[Value]) -> Option<[NodeId; 2]> {
        if outputs.contains(&x) || self.reads.get(&x) != Some(&2) {
            return None;
        }
        self.readers(x).try_into().ok()
    }

    /// The end of `x · (erf(x / √2) + 1)` after `x` (GELU as exporters write it, its ½
    /// folded elsewhere) and the values in it, when that is how `x` is read — twice, by the
    /// division and the product — and no value in it is read elsewhere or an output.
    fn gelu(&self, x: Value, outputs: &[Value]) -> Option<(Value, [Value; 4])> {
        let g = self.g;
        let users = |v: Value| self.readers(v);
        let once = |v: Value| !outputs.contains(&v) && self.reads.get(&v) == Some(&1);
        let (shape, dtype) = (&self.ty(x).shape, self.ty(x).dtype);
        let same = |v: Value| self.ty(v).shape == *shape && self.ty(v).dtype == dtype;
        let [a, b] = self.read_twice(x, outputs)?;
        let (div, mul) = match (g.node(a).op(), g.node(b).op()) {
            (Op::Div, Op::Mul) => (a, b),
            (Op::Mul, Op::Div) => (b, a),
            _ => return None,
        };
        let (div_v, mul_v) = (Value::new(div, 0), Value::new(mul, 0));
        let &[num, den] = g.node(div).inputs() else {
            return None;
        };
        let sqrt2 = f64::from(std::f32::consts::SQRT_2);
        let constant = |v: Value, c: f64| scalar_value(g, v) == Some(c);
        if num != x || !constant(den, sqrt2) || !once(div_v) || !same(div_v) {
            return None;
        }
        let [erf] = users(div_v)[..] else {
            return None;
        };
        let erf_v = Value::new(erf, 0);
        if !matches!(g.node(erf).op(), Op::Erf) || !once(erf_v) || !same(erf_v) {
            return None;
        }
        let [add] = users(erf_v)[..] else {
            return None;
        };
        let add_v = Value::new(add, 0);
        let &[p, q] = g.node(add).inputs() else {
            return None;
        };
        let one = if p == erf_v { q } else { p };
        let fits = matches!(g.node(add).op(), Op::Add) && once(add_v) && same(add_v);
        if !fits || !constant(one, 1.0) {
            return None;
        }
        let ins = g.node(mul).inputs();
        let product = ins.len() == 2 && ins.contains(&x) && ins.contains(&add_v) && same(mul_v);
        product.then_some((mul_v, [x, div_v, erf_v, add_v]))
    }

    /// The end of `x · max(min(x·(1/6) + ½, 1), 0)` after `x` (HardSwish as the ONNX importer
    /// writes it, 1/6 rounded to f32) and the values in it, when that is how `x` is read —
    /// twice, by the two products — and every value in it is read once, by the next, and is
    /// no output.
    fn hardswish(&self, x: Value, outputs: &[Value]) -> Option<(Value, [Value; 5])> {
        let g = self.g;
        let once = |v: Value| !outputs.contains(&v) && self.reads.get(&v) == Some(&1);
        let same = |v: Value| self.ty(v) == self.ty(x);
        let constant = |v: Value, c: f64| scalar_value(g, v) == Some(c);
        let other = |n: NodeId, v: Value| other_operand(g, n, v);
        let [a, b] = self.read_twice(x, outputs)?;
        let is_mul = |n: NodeId| matches!(g.node(n).op(), Op::Mul);
        if !is_mul(a) || !is_mul(b) {
            return None;
        }
        let sixth = f64::from(kernel::routines::epilogue::SIXTH);
        let (scale, last) = match (other(a, x)?, other(b, x)?) {
            (p, _) if constant(p, sixth) => (a, b),
            (_, q) if constant(q, sixth) => (b, a),
            _ => return None,
        };
        let next = |v, op, c| self.step_after(v, x, outputs, op, c);
        let scaled = Value::new(scale, 0);
        let shifted = next(scaled, |op| matches!(op, Op::Add), 0.5)?;
        let low = next(shifted, |op| matches!(op, Op::Min), 1.0)?;
        let clamped = next(low, |op| matches!(op, Op::Max), 0.0)?;
        if !once(clamped) || !same(clamped) || self.readers(clamped)[..] != [last] {
            return None;
        }
        let end = Value::new(last, 0);
        same(end).then_some((end, [x, scaled, shifted, low, clamped]))
    }

    /// The end of `max(min(x·(1/6) + ½, 1), 0)` after `x` (HardSigmoid as the ONNX importer
    /// writes it, a squeeze-excite's gate) and the values in it, when every value in it is
    /// read once, by the next, and is no output (so not HardSwish, which reads `x` twice).
    fn hardsigmoid(&self, x: Value, outputs: &[Value]) -> Option<(Value, [Value; 4])> {
        let same = |v: Value| self.ty(v) == self.ty(x);
        let next = |v, op, c| self.step_after(v, x, outputs, op, c);
        let sixth = f64::from(kernel::routines::epilogue::SIXTH);
        let scaled = next(x, |op| matches!(op, Op::Mul), sixth)?;
        let shifted = next(scaled, |op| matches!(op, Op::Add), 0.5)?;
        let low = next(shifted, |op| matches!(op, Op::Min), 1.0)?;
        let end = next(low, |op| matches!(op, Op::Max), 0.0)?;
        same(end).then_some((end, [x, scaled, shifted, low]))
    }

    /// The activation (7 or 8), end and values of `x · min(max(x + 3, 0), 6)` then `/ 6` (7,
    /// Paddle's HardSwish) or `· (1/6)` (8, Keras's) after `x`, when that is how `x` is read —
    /// twice, by the sum and the product — and every value in it is read once, by the next,
    /// and is no output.
    fn hardswish_relu6(&self, x: Value, outputs: &[Value]) -> Option<(i64, Value, [Value; 5])> {
        let g = self.g;
        let once = |v: Value| !outputs.contains(&v) && self.reads.get(&v) == Some(&1);
        let same = |v: Value| self.ty(v) == self.ty(x);
        let constant = |v: Value, c: f64| scalar_value(g, v) == Some(c);
        let other = |n: NodeId, v: Value| other_operand(g, n, v);
        let [a, b] = self.read_twice(x, outputs)?;
        let (add, mul) = match (g.node(a).op(), g.node(b).op()) {
            (Op::Add, Op::Mul) => (a, b),
            (Op::Mul, Op::Add) => (b, a),
            _ => return None,
        };
        if !constant(other(add, x)?, 3.0) {
            return None;
        }
        let next = |v, op, c| self.step_after(v, x, outputs, op, c);
        let shifted = Value::new(add, 0);
        let low = next(shifted, |op| matches!(op, Op::Max), 0.0)?;
        let clipped = next(low, |op| matches!(op, Op::Min), 6.0)?;
        let product = Value::new(mul, 0);
        if !once(clipped) || !same(clipped) || other(mul, x)? != clipped {
            return None;
        }
        let sixth = f64::from(kernel::routines::epilogue::SIXTH);
        let inner = [x, shifted, low, clipped, product];
        if let Some(end) = next(product, |op| matches!(op, Op::Div), 6.0) {
            // The divisor second: `6 / y` is not this.
            let second = g.node(end.node).inputs()[1] != product;
            return (second && same(end)).then_some((7, end, inner));
        }
        let end = next(product, |op| matches!(op, Op::Mul), sixth)?;
        same(end).then_some((8, end, inner))
    }

    /// The end of `x · sigmoid(x)` after `x` (SiLU, SwiGLU's gate) and the values in it, when
    /// that is how `x` is read — twice, by the sigmoid and the product — and the sigmoid is
    /// read only by the product and no value in it is an output.
    fn silu(&self, x: Value, outputs: &[Value]) -> Option<(Value, [Value; 2])> {
        let g = self.g;
        let [a, b] = self.read_twice(x, outputs)?;
        let (sig, mul) = match (g.node(a).op(), g.node(b).op()) {
            (Op::Sigmoid, Op::Mul) => (a, b),
            (Op::Mul, Op::Sigmoid) => (b, a),
            _ => return None,
        };
        let (sig_v, mul_v) = (Value::new(sig, 0), Value::new(mul, 0));
        let once = !outputs.contains(&sig_v) && self.reads.get(&sig_v) == Some(&1);
        let same = |v: Value| self.ty(v) == self.ty(x);
        let ins = g.node(mul).inputs();
        let product = ins.len() == 2 && ins.contains(&x) && ins.contains(&sig_v);
        (once && product && same(sig_v) && same(mul_v)).then_some((mul_v, [x, sig_v]))
    }
}

/// The operand of binary node `n` besides `v`, when `n` reads `v` once.
fn other_operand(g: &Graph, n: NodeId, v: Value) -> Option<Value> {
    match *g.node(n).inputs() {
        [p, q] if p == v && q != v => Some(q),
        [p, q] if q == v && p != v => Some(p),
        _ => None,
    }
}

/// The value of `v` when it is a one-element constant (seen through views).
pub(super) fn scalar_value(g: &Graph, mut v: Value) -> Option<f64> {
    while is_view(g.node(v.node).op()) {
        v = g.node(v.node).inputs()[0];
    }
    match g.node(v.node).op() {
        Op::Constant { value } if value.tensor.numel() == 1 => {
            value.tensor.to_f64_vec().first().copied()
        }
        _ => None,
    }
}

/// Index spaces up to this many points are checked point by point for a constant offset.
const OFFSET_CHECK: i64 = 1 << 14;

/// The constant `c` with `index = layout + c` at every point of `shape` (the index variables
/// `idx`), checked at each point: a residual laid out as the result, from element `c`.
fn offset_from(index: &Expr, layout: &Expr, idx: &[Expr], shape: &Shape) -> Option<i64> {
    let mut axes = Vec::new();
    for (e, d) in idx.iter().zip(shape.dims()) {
        if let Expr::Var(v) = e {
            axes.push((*v, d.as_const()?));
        }
    }
    let points = axes.iter().try_fold(1i64, |n, &(_, d)| n.checked_mul(d))?;
    if points == 0 || points > OFFSET_CHECK {
        return None;
    }
    let mut at: Vec<(VarId, i64)> = axes.iter().map(|&(v, _)| (v, 0)).collect();
    let mut off = None;
    for mut p in 0..points {
        for (&(_, d), (_, x)) in axes.iter().zip(at.iter_mut()).rev() {
            *x = p % d;
            p /= d;
        }
        let value = |e: &Expr| kernel::stages::eval_at(e, &[], &at);
        let diff = value(index)?.checked_sub(value(layout)?)?;
        match off {
            None => off = Some(diff),
            Some(o) if o != diff => return None,
            Some(_) => {}
        }
    }
    off
}
