//! Lowering of a fused kernel body (or a single graph node) to the loop-level kernel IR.
//!
//! The schedule is "materialize roots, inline the rest": reductions, contractions, gathers,
//! concatenations, outputs and elementwise values read more than once get a buffer and a loop
//! nest of their own; views (broadcast, reshape, transpose, slice) become index arithmetic,
//! and single-use elementwise values become expressions inside their consumer's loop.
//! Anything else is [`Unsupported`], and the caller runs that node another way.

use std::collections::HashMap;

use ir::{DType, Dim, Graph, NodeId, Op, Shape, Tensor, TensorType, Value};

use kernel::{
    codes, is_native, Buf, BufId, BufKind, Conv2d, Expr, Gemm, Kernel, Lowered, Mark, Stmt,
    Unsupported, VarId,
};

type Result<T> = std::result::Result<T, Unsupported>;

fn unsupported<T>(what: impl Into<String>) -> Result<T> {
    Err(Unsupported(what.into()))
}

/// Lowers a graph (a fused body) to one kernel named `name`.
pub fn lower(g: &Graph, name: &str) -> Result<Lowered> {
    let mut l = Lowering::new(g, name)?;
    l.run()?;
    kernel::stages::fuse(&mut l.k);
    kernel::stages::shrink_scratch(&mut l.k);
    let outputs = g
        .outputs()
        .iter()
        .map(|(_, v)| g.value_type(*v).shape.clone())
        .collect();
    Ok(Lowered {
        kernel: l.k,
        consts: l.consts,
        outputs,
    })
}

struct Lowering<'g> {
    g: &'g Graph,
    k: Kernel,
    consts: Vec<(BufId, Tensor)>,
    /// Values that live in a buffer.
    bufs: HashMap<Value, BufId>,
    dims: HashMap<Dim, usize>,
    /// Reads of each value, counted through views.
    reads: HashMap<Value, usize>,
    order: Vec<NodeId>,
}

fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Broadcast { .. }
            | Op::Reshape { .. }
            | Op::Refine { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
    )
}

fn is_elementwise(op: &Op) -> bool {
    use ir::OpKind;
    matches!(
        op.kind(),
        OpKind::Unary | OpKind::Binary | OpKind::Ternary | OpKind::Cast
    )
}

impl<'g> Lowering<'g> {
    fn new(g: &'g Graph, name: &str) -> Result<Lowering<'g>> {
        let order = g
            .topo_order()
            .map_err(|_| Unsupported("a cyclic graph".into()))?;
        let mut l = Lowering {
            g,
            k: Kernel {
                name: name.to_string(),
                bufs: Vec::new(),
                dims: Vec::new(),
                vars: Vec::new(),
                body: Vec::new(),
            },
            consts: Vec::new(),
            bufs: HashMap::new(),
            dims: HashMap::new(),
            reads: HashMap::new(),
            order,
        };
        for &id in &l.order {
            for ty in g.node(id).types() {
                if !is_native(ty.dtype) {
                    return unsupported(format!("dtype {}", ty.dtype));
                }
            }
        }
        // Reads through views: a view read twice reads its operand twice.
        for &id in l.order.iter().rev() {
            let node = g.node(id);
            let outs = (0..node.types().len())
                .map(|i| l.reads.get(&Value::new(id, i as u32)).copied().unwrap_or(0))
                .sum::<usize>();
            let per_use = if is_view(node.op()) { outs.max(1) } else { 1 };
            for &v in node.inputs() {
                *l.reads.entry(v).or_default() += per_use;
            }
        }
        for (_, v) in g.outputs() {
            *l.reads.entry(*v).or_default() += 1;
        }
        Ok(l)
    }

    fn ty(&self, v: Value) -> &'g TensorType {
        self.g.value_type(v)
    }

    fn dim(&mut self, d: &Dim) -> Expr {
        if let Some(c) = d.as_const() {
            return Expr::i64(c);
        }
        let next = self.dims.len();
        let k = *self.dims.entry(d.clone()).or_insert(next);
        if k == next {
            self.k.dims.push(d.clone());
        }
        Expr::Dim(k)
    }

    fn var(&mut self, dtype: DType) -> VarId {
        self.k.vars.push(dtype);
        self.k.vars.len() - 1
    }

    fn buf(&mut self, name: String, ty: &TensorType, kind: BufKind) -> Result<BufId> {
        let len = ty
            .shape
            .numel()
            .map_err(|e| Unsupported(format!("a tensor size: {e}")))?;
        self.k.bufs.push(Buf {
            name,
            dtype: ty.dtype,
            len,
            kind,
        });
        Ok(self.k.bufs.len() - 1)
    }

    /// Row-major offset of `idx` in `shape` (Horner form).
    fn linear(&mut self, idx: &[Expr], shape: &Shape) -> Expr {
        let mut off = Expr::i64(0);
        for (i, d) in idx.iter().zip(shape.dims()) {
            let d = self.dim(d);
            off = off * d + i.clone();
        }
        off
    }

    fn run(&mut self) -> Result<()> {
        let g = self.g;
        for (i, &p) in g.params().iter().enumerate() {
            let ty = &g.node(p).types()[0];
            let b = self.buf(format!("in{i}"), ty, BufKind::Input)?;
            self.bufs.insert(Value::new(p, 0), b);
        }
        // Outputs get their buffers up front (the caller's order); a value that is an output
        // lives in its first output buffer, and later outputs of the same value are copies.
        let mut copies = Vec::new();
        for (i, (_, v)) in g.outputs().iter().enumerate() {
            let b = self.buf(format!("out{i}"), self.ty(*v), BufKind::Output)?;
            if self.bufs.contains_key(v) {
                copies.push((b, *v));
            } else {
                self.bufs.insert(*v, b);
                if g.node(v.node).op().kind() == ir::OpKind::Source
                    && !matches!(g.node(v.node).op(), Op::Param { .. })
                {
                    copies.push((b, *v));
                    self.bufs.remove(v);
                }
            }
        }
        let order = self.order.clone();
        for id in order {
            let node = g.node(id);
            let v = Value::new(id, 0);
            let op = node.op();
            let output_buf = self.bufs.get(&v).copied().filter(|&b| {
                self.k.bufs[b].kind == BufKind::Output && !matches!(op, Op::Param { .. })
            });
            match op {
                Op::Param { .. } => {}
                Op::Constant { value } => {
                    if value.tensor.numel() != 1 {
                        let b = self.buf(
                            format!("c{}", self.consts.len()),
                            &node.types()[0],
                            BufKind::Input,
                        )?;
                        self.consts.push((b, value.tensor.clone()));
                        self.bufs.insert(v, b);
                    }
                }
                Op::TopK { k, axis, largest } => {
                    let i = Value::new(id, 1);
                    let out_i = self
                        .bufs
                        .get(&i)
                        .copied()
                        .filter(|&b| self.k.bufs[b].kind == BufKind::Output);
                    let bv = self.target(v, output_buf)?;
                    let bi = self.target(i, out_i)?;
                    self.topk(v, *k, *axis as usize, *largest, bv, bi)?;
                }
                _ if node.types().len() != 1 => {
                    return unsupported(format!("`{}` (several results)", op.mnemonic()))
                }
                _ if is_view(op)
                    || is_elementwise(op)
                    || matches!(op, Op::Iota { .. } | Op::Pad { .. }) =>
                {
                    let many = self.reads.get(&v).copied().unwrap_or(0) > 1;
                    if output_buf.is_some() || (many && !is_view(op)) {
                        let b = self.target(v, output_buf)?;
                        self.elementwise_nest(v, b)?;
                    }
                }
                Op::ReduceSum { axes }
                | Op::ReduceProd { axes }
                | Op::ReduceMax { axes }
                | Op::ReduceMin { axes } => {
                    let b = self.target(v, output_buf)?;
                    self.reduce(v, op, axes, b)?;
                }
                Op::Dot { .. } => {
                    let b = self.target(v, output_buf)?;
                    self.dot(v, b)?;
                }
                Op::Gather { axis } => {
                    let b = self.target(v, output_buf)?;
                    self.gather(v, *axis as usize, b)?;
                }
                Op::Conv { .. } => {
                    let b = self.target(v, output_buf)?;
                    self.conv(v, b)?;
                }
                Op::ArgMax { axis, last } | Op::ArgMin { axis, last } => {
                    let b = self.target(v, output_buf)?;
                    let max = matches!(op, Op::ArgMax { .. });
                    self.arg_reduce(v, *axis as usize, max, *last, b)?;
                }
                Op::ReduceWindow { .. } => {
                    let b = self.target(v, output_buf)?;
                    self.reduce_window(v, b)?;
                }
                Op::Concat { axis } => {
                    let b = self.target(v, output_buf)?;
                    self.concat(v, *axis as usize, b)?;
                }
                Op::GatherNd { batch_dims } => {
                    let b = self.target(v, output_buf)?;
                    self.gather_nd(v, *batch_dims as usize, b)?;
                }
                Op::ScatterNd { reduction } => {
                    let b = self.target(v, output_buf)?;
                    self.scatter_nd(v, *reduction, b)?;
                }
                _ => return unsupported(format!("`{}`", op.mnemonic())),
            }
        }
        for (b, v) in copies {
            let ty = self.ty(v);
            self.nest(&ty.shape, ty.dtype, |l, idx| {
                let value = l.expr(v, idx)?;
                let index = l.linear(idx, &ty.shape);
                Ok(vec![Stmt::Store {
                    buf: b,
                    index,
                    value,
                }])
            })?;
        }
        Ok(())
    }

    /// The buffer `v` is computed into: its output buffer, or new scratch.
    fn target(&mut self, v: Value, output: Option<BufId>) -> Result<BufId> {
        if let Some(b) = output {
            return Ok(b);
        }
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), self.ty(v), BufKind::Scratch)?;
        Ok(b)
    }

    /// A loop nest over `shape` whose innermost body `f` makes from the index variables.
    /// Axes of extent 1 get no loop (their index is 0). The outermost loop is parallel when
    /// something is nested in it; the innermost is vector when it holds only scalar code.
    fn nest(
        &mut self,
        shape: &Shape,
        dtype: DType,
        f: impl FnOnce(&mut Self, &[Expr]) -> Result<Vec<Stmt>>,
    ) -> Result<()> {
        let unit = |d: &Dim| d.as_const() == Some(1);
        let vars: Vec<Option<VarId>> = shape
            .dims()
            .iter()
            .map(|d| (!unit(d)).then(|| self.var(DType::I64)))
            .collect();
        let idx: Vec<Expr> = vars
            .iter()
            .map(|v| v.map_or(Expr::i64(0), Expr::Var))
            .collect();
        let mut body = f(self, &idx)?;
        let loops: Vec<(VarId, &Dim)> = vars
            .iter()
            .zip(shape.dims())
            .filter_map(|(v, d)| v.map(|v| (v, d)))
            .collect();
        let leaf = body.iter().all(|s| {
            matches!(
                s,
                Stmt::Store { .. } | Stmt::Set { .. } | Stmt::Check { .. }
            )
        });
        let n = loops.len();
        for (a, &(var, d)) in loops.iter().enumerate().rev() {
            let mark = if a == 0 && (n > 1 || !leaf) {
                Mark::Parallel
            } else if a + 1 == n && leaf && dtype == DType::F32 {
                Mark::Vector(4)
            } else {
                Mark::Serial
            };
            let extent = self.dim(d);
            body = vec![Stmt::Loop {
                var,
                extent,
                mark,
                body,
            }];
        }
        self.k.body.extend(body);
        Ok(())
    }

    fn elementwise_nest(&mut self, v: Value, b: BufId) -> Result<()> {
        let ty = self.ty(v);
        let result = self.nest(&ty.shape, ty.dtype, |l, idx| {
            let value = l.inline(v, idx)?;
            let index = l.linear(idx, &ty.shape);
            Ok(vec![Stmt::Store {
                buf: b,
                index,
                value,
            }])
        });
        self.bufs.insert(v, b);
        result
    }

    /// The value of `v` at `idx`: a load if it lives in a buffer, else computed in place.
    fn expr(&mut self, v: Value, idx: &[Expr]) -> Result<Expr> {
        if let Some(&b) = self.bufs.get(&v) {
            let index = self.linear(idx, &self.ty(v).shape);
            return Ok(Expr::Load {
                buf: b,
                index: Box::new(index),
            });
        }
        self.inline(v, idx)
    }

    /// The value of `v` at `idx` computed from its operands.
    fn inline(&mut self, v: Value, idx: &[Expr]) -> Result<Expr> {
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
    fn reshape_index(&mut self, idx: &[Expr], to: &Shape, from: &Shape) -> Result<Vec<Expr>> {
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

    fn reduce(&mut self, v: Value, op: &Op, axes: &[i64], b: BufId) -> Result<()> {
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
    fn materialized(&mut self, v: Value) -> Result<()> {
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

    fn dot(&mut self, v: Value, b: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::Dot {
            lhs_batch,
            rhs_batch,
            lhs_contract,
            rhs_contract,
        } = node.op()
        else {
            unreachable!("called on dots")
        };
        let (lv, rv) = (node.inputs()[0], node.inputs()[1]);
        if self.gemm(v, b)? {
            self.bufs.insert(v, b);
            return Ok(());
        }
        self.materialized(lv)?;
        self.materialized(rv)?;
        let (ls, rs) = (self.ty(lv).shape.clone(), self.ty(rv).shape.clone());
        let ty = self.ty(v);
        let dtype = ty.dtype;
        let DotAxes {
            lb,
            rb,
            lc,
            rc,
            lf,
            rf,
        } = DotAxes::new(
            [lhs_batch, rhs_batch, lhs_contract, rhs_contract],
            ls.rank(),
            rs.rank(),
        );
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
            let x = l.expr(lv, &li)?;
            let y = l.expr(rv, &ri)?;
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
            let store = Stmt::Store {
                buf: b,
                index,
                value: Expr::Var(acc),
            };
            Ok(accumulate(acc, constant(0.0, dtype), loops, update, store))
        })?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// `v` as a strided view of a buffer: the buffer and each axis's stride (in elements),
    /// when `v` is a buffer or transposes and broadcasts of one.
    fn strided(&self, v: Value) -> Option<(BufId, Vec<Dim>)> {
        let ty = self.ty(v);
        if let Some(&b) = self.bufs.get(&v) {
            let mut strides = vec![Dim::constant(1); ty.rank()];
            for a in (0..ty.rank().saturating_sub(1)).rev() {
                strides[a] = strides[a + 1].mul(ty.shape.dim(a + 1)).ok()?;
            }
            return Some((b, strides));
        }
        let node = self.g.node(v.node);
        match node.op() {
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
    fn as_strided(&mut self, v: Value) -> Result<(BufId, Vec<Dim>)> {
        if let Some(s) = self.strided(v) {
            return Ok(s);
        }
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), self.ty(v), BufKind::Scratch)?;
        self.elementwise_nest(v, b)?;
        Ok(self.strided(v).expect("now a buffer"))
    }

    /// An f32 dot with one contracted axis as calls of the library matrix product (one per
    /// batch element); `false` when the dot does not have that form.
    fn gemm(&mut self, v: Value, out: BufId) -> Result<bool> {
        let node = self.g.node(v.node);
        let Op::Dot {
            lhs_batch,
            rhs_batch,
            lhs_contract,
            rhs_contract,
        } = node.op()
        else {
            return Ok(false);
        };
        let (lv, rv) = (node.inputs()[0], node.inputs()[1]);
        let ty = self.ty(v);
        if ty.dtype != DType::F32 || lhs_contract.len() != 1 {
            return Ok(false);
        }
        let (ls, rs) = (self.ty(lv).shape.clone(), self.ty(rv).shape.clone());
        let DotAxes {
            lb,
            rb,
            lc,
            rc,
            lf,
            rf,
        } = DotAxes::new(
            [lhs_batch, rhs_batch, lhs_contract, rhs_contract],
            ls.rank(),
            rs.rank(),
        );
        let (la, lst) = self.as_strided(lv)?;
        let (ra, rst) = self.as_strided(rv)?;
        // Free axes merge into one matrix axis when they are laid out like one.
        let merged = |axes: &[usize], shape: &Shape, st: &[Dim]| -> Option<(Dim, Dim)> {
            let Some(&last) = axes.last() else {
                return Some((Dim::constant(1), Dim::constant(0)));
            };
            let mut size = Dim::constant(1);
            for w in axes.windows(2) {
                if st[w[0]] != st[w[1]].mul(shape.dim(w[1])).ok()? {
                    return None;
                }
            }
            for &a in axes {
                size = size.mul(shape.dim(a)).ok()?;
            }
            Some((size, st[last].clone()))
        };
        let (Some((m, a_rs)), Some((n, b_cs))) = (merged(&lf, &ls, &lst), merged(&rf, &rs, &rst))
        else {
            return Ok(false);
        };
        let (a_cs, b_rs) = (lst[lc[0]].clone(), rst[rc[0]].clone());
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
            };
            Ok(vec![Stmt::Gemm(Box::new(g))])
        })?;
        Ok(true)
    }

    /// Window taps `pos` (one per axis of `dims`) clamped into the axes, and whether all of
    /// them were inside: a guarded load reads the clamped index and discards what it read
    /// unless the condition holds.
    fn clamp(&mut self, pos: &[Expr], dims: &[Dim]) -> (Vec<Expr>, Expr) {
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let mut ok = Expr::Int(1, DType::Bool);
        let mut out = Vec::new();
        for (i, d) in pos.iter().zip(dims) {
            let n = self.dim(d);
            let inside = op(
                Op::And,
                vec![
                    op(Op::Ge, vec![i.clone(), Expr::i64(0)], DType::Bool),
                    op(Op::Lt, vec![i.clone(), n], DType::Bool),
                ],
                DType::Bool,
            );
            out.push(op(
                Op::Select,
                vec![inside.clone(), i.clone(), Expr::i64(0)],
                DType::I64,
            ));
            ok = op(Op::And, vec![ok, inside], DType::Bool);
        }
        (out, ok)
    }

    /// A conv's attributes and operands with its (static) shapes.
    fn static_conv(&self, v: Value) -> StaticConv {
        let node = self.g.node(v.node);
        let Op::Conv {
            stride,
            dilation,
            pad_low,
            groups,
            ..
        } = node.op()
        else {
            unreachable!("called on convs")
        };
        let (xv, wv) = (node.inputs()[0], node.inputs()[1]);
        let os_shape = self.ty(v).shape.clone();
        StaticConv {
            stride: stride.clone(),
            dilation: dilation.clone(),
            pad_low: pad_low.clone(),
            groups: *groups,
            xv,
            wv,
            xs: static_dims(&self.ty(xv).shape),
            ws: static_dims(&self.ty(wv).shape),
            os: static_dims(&os_shape),
            os_shape,
        }
    }

    /// A static f32 2-D conv with one input channel per group (depthwise): one library plane
    /// conv per image and output channel, in a parallel nest (which an epilogue may join).
    fn conv_planes(&mut self, v: Value, out: BufId, xb: BufId, wb: BufId) -> Result<()> {
        let StaticConv {
            stride,
            dilation,
            pad_low,
            groups,
            xs,
            ws,
            os,
            os_shape,
            ..
        } = self.static_conv(v);
        let og = ws[0] / groups;
        let geometry = kernel::routines::conv::Geometry {
            h: xs[2],
            w: xs[3],
            oh: os[2],
            ow: os[3],
            kh: ws[2],
            kw: ws[3],
            sh: stride[0],
            sw: stride[1],
            dh: dilation[0],
            dw: dilation[1],
            ph: pad_low[0],
            pw: pad_low[1],
        };
        let rows = Shape::new(os_shape.dims()[..2].to_vec());
        self.nest(&rows, DType::F32, |_, idx| {
            let (n, oc) = (idx[0].clone(), idx[1].clone());
            let ch = Expr::index_op(Op::Div, oc.clone(), Expr::i64(og));
            Ok(vec![Stmt::Conv2d(Box::new(Conv2d {
                x: xb,
                x_off: (n.clone() * Expr::i64(xs[1]) + ch) * Expr::i64(xs[2] * xs[3]),
                k: wb,
                k_off: oc.clone() * Expr::i64(ws[2] * ws[3]),
                out,
                out_off: (n * Expr::i64(os[1]) + oc) * Expr::i64(os[2] * os[3]),
                geometry,
            }))])
        })
    }

    /// A direct f32 convolution (static shapes) that accumulates whole output rows, so that
    /// the innermost loop runs along the output's last axis in vector lanes: per output row,
    /// `row = 0`, then `row[w] += x[.., w·stride + k·dilation] · weight` for every input
    /// channel of the group and window position (the order of the scalar loops, so sums
    /// round identically). Padding is a zero-filled copy of the input, so loads need no guard.
    fn conv_rows(&mut self, v: Value, out: BufId, xb: BufId, wb: BufId) -> Result<()> {
        let StaticConv {
            stride,
            dilation,
            pad_low,
            groups,
            xv,
            wv,
            xs,
            ws,
            os,
            os_shape,
        } = self.static_conv(v);
        let sp = xs.len() - 2;
        let (cg, og) = (ws[1], ws[0] / groups);
        let (pads, padded) = conv_padding(&xs, &ws, &os, &stride, &dilation, &pad_low);
        // With a stride of 2 along the last axis, the copy keeps even and odd columns apart,
        // so that each tap reads consecutive elements (vector loads, not gathers).
        // (Only for the few-tap form below, whose taps are constants.)
        let split = stride[sp - 1] == 2 && cg * ws[2..].iter().product::<i64>() <= 32;
        let zero = Expr::Float(0.0, DType::F32);
        let (pb, p_shape) = self.padded_copy(xv, xb, &pads, &padded, zero, split)?;
        // The index in the copy of input position `at` (one per axis; the last one is
        // `o * 2 + t` with `t` the tap's constant offset when split).
        let tap_index = |l: &mut Self, mut at: Vec<Expr>, o: Expr, t: i64| -> Expr {
            if split {
                at.push(Expr::i64(t % 2));
                at.push(o + Expr::i64(t / 2));
            } else {
                at.push(o * Expr::i64(stride[sp - 1]) + Expr::i64(t));
            }
            l.linear(&at, &p_shape)
        };
        let ow = *os.last().expect("convs have spatial axes");
        let rows = Shape::new(os_shape.dims()[..os.len() - 1].to_vec());
        let ws_shape = self.ty(wv).shape.clone();
        let add = |a: Expr, b: Expr| Expr::Op {
            op: Op::Add,
            args: vec![a, b],
            dtype: DType::F32,
        };
        let mul = |a: Expr, b: Expr| Expr::Op {
            op: Op::Mul,
            args: vec![a, b],
            dtype: DType::F32,
        };
        self.nest(&rows, DType::F32, |l, idx| {
            let (n, oc) = (idx[0].clone(), idx[1].clone());
            let wv_ = l.var(DType::I64);
            let w = Expr::Var(wv_);
            let mut oidx = idx.to_vec();
            oidx.push(w.clone());
            let oindex = l.linear(&oidx, &os_shape);
            let oindex_zero = oindex.clone();
            let g = Expr::index_op(Op::Div, oc.clone(), Expr::i64(og));
            let taps = cg * ws[2..].iter().product::<i64>();
            if taps <= 32 {
                // Few taps: one vector loop whose value sums them all in registers, in the
                // order of the loops below (so it rounds identically).
                let mut sum = Expr::Float(0.0, DType::F32);
                for t in 0..taps {
                    let (mut rest, mut kpos) = (t, vec![0; sp]);
                    for d in (0..sp).rev() {
                        kpos[d] = rest % ws[2 + d];
                        rest /= ws[2 + d];
                    }
                    let c = rest;
                    let mut pidx = vec![n.clone(), g.clone() * Expr::i64(cg) + Expr::i64(c)];
                    for d in 0..sp - 1 {
                        pidx.push(
                            idx[2 + d].clone() * Expr::i64(stride[d])
                                + Expr::i64(kpos[d] * dilation[d]),
                        );
                    }
                    let t = kpos[sp - 1] * dilation[sp - 1];
                    let index = tap_index(l, pidx, w.clone(), t);
                    let mut widx = vec![oc.clone(), Expr::i64(c)];
                    widx.extend(kpos.iter().map(|&k| Expr::i64(k)));
                    let x = Expr::Load {
                        buf: pb,
                        index: Box::new(index),
                    };
                    let wt = Expr::Load {
                        buf: wb,
                        index: Box::new(l.linear(&widx, &ws_shape)),
                    };
                    sum = add(sum, mul(x, wt));
                }
                return Ok(vec![Stmt::Loop {
                    var: wv_,
                    extent: Expr::i64(ow),
                    mark: Mark::Vector(4),
                    body: vec![Stmt::Store {
                        buf: out,
                        index: oindex,
                        value: sum,
                    }],
                }]);
            }
            let ch = l.var(DType::I64);
            let kv: Vec<VarId> = (0..sp).map(|_| l.var(DType::I64)).collect();
            let mut pidx = vec![n, g * Expr::i64(cg) + Expr::Var(ch)];
            for d in 0..sp {
                let o = if d + 1 == sp {
                    w.clone()
                } else {
                    idx[2 + d].clone()
                };
                pidx.push(o * Expr::i64(stride[d]) + Expr::Var(kv[d]) * Expr::i64(dilation[d]));
            }
            let pindex = l.linear(&pidx, &p_shape);
            let mut widx = vec![oc, Expr::Var(ch)];
            widx.extend(kv.iter().map(|&k| Expr::Var(k)));
            let windex = l.linear(&widx, &ws_shape);
            let x = Expr::Load {
                buf: pb,
                index: Box::new(pindex),
            };
            let wt = Expr::Load {
                buf: wb,
                index: Box::new(windex),
            };
            let acc = Expr::Load {
                buf: out,
                index: Box::new(oindex.clone()),
            };
            let update = Stmt::Loop {
                var: wv_,
                extent: Expr::i64(ow),
                mark: Mark::Vector(4),
                body: vec![Stmt::Store {
                    buf: out,
                    index: oindex,
                    value: add(acc, mul(x, wt)),
                }],
            };
            let mut loops = vec![(ch, Expr::i64(cg))];
            for (d, &k) in kv.iter().enumerate() {
                loops.push((k, Expr::i64(ws[2 + d])));
            }
            let zero = Stmt::Loop {
                var: wv_,
                extent: Expr::i64(ow),
                mark: Mark::Vector(4),
                body: vec![Stmt::Store {
                    buf: out,
                    index: oindex_zero,
                    value: Expr::Float(0.0, DType::F32),
                }],
            };
            let mut body = vec![zero];
            body.extend(serial(loops, vec![update]));
            Ok(body)
        })
    }

    /// `x` (static shape, in buffer `xb`) copied into a buffer of shape `padded` at offset
    /// `pad_low` per axis, the rest `fill` — or `xb` itself when nothing is padded. Loads of
    /// windows then need no guard. With `split`, the last axis is split by parity: padded
    /// position `(.., col)` lands at `(.., col % 2, col / 2)`, and the copy's last extent `e`
    /// becomes `2, ceil(e / 2)`.
    fn padded_copy(
        &mut self,
        x: Value,
        xb: BufId,
        pad_low: &[i64],
        padded: &[i64],
        fill: Expr,
        split: bool,
    ) -> Result<(BufId, Shape)> {
        let xs = self.ty(x).shape.clone();
        let dtype = self.ty(x).dtype;
        let r = padded.len() - 1;
        let mut dims = padded.to_vec();
        if split {
            dims[r] = 2;
            dims.push((padded[r] + 1) / 2);
        }
        let p_shape = Shape::new(dims.iter().map(|&d| Dim::constant(d)).collect());
        if p_shape == xs && pad_low.iter().all(|&p| p == 0) {
            return Ok((xb, p_shape));
        }
        let n = self.k.bufs.len();
        let pb = self.buf(
            format!("pad{n}"),
            &TensorType::new(dtype, p_shape.clone()),
            BufKind::Scratch,
        )?;
        // Filled per row, in a nest like the copy's (so it runs parallel, and may fuse with
        // the copy per channel).
        self.nest(&p_shape, dtype, |l, idx| {
            Ok(vec![Stmt::Store {
                buf: pb,
                index: l.linear(idx, &p_shape),
                value: fill,
            }])
        })?;
        self.nest(&xs, dtype, |l, idx| {
            let mut at: Vec<Expr> = idx
                .iter()
                .zip(pad_low)
                .map(|(i, &p)| i.clone() + Expr::i64(p))
                .collect();
            if split {
                let col = at.pop().expect("a last axis");
                at.push(Expr::index_op(Op::Rem, col.clone(), Expr::i64(2)));
                at.push(Expr::index_op(Op::Div, col, Expr::i64(2)));
            }
            let index = l.linear(&at, &p_shape);
            let value = Expr::Load {
                buf: xb,
                index: Box::new(l.linear(idx, &xs)),
            };
            Ok(vec![Stmt::Store {
                buf: pb,
                index,
                value,
            }])
        })?;
        Ok((pb, p_shape))
    }

    /// A convolution: f32 ones with enough channels per group as an im2col buffer and one
    /// `gemm` per image and group; the rest (depthwise, integers) as direct loops. Padding is
    /// a guarded load: the index is clamped and the value replaced by zero outside.
    fn conv(&mut self, v: Value, out: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::Conv {
            stride,
            dilation,
            pad_low,
            groups,
            ..
        } = node.op()
        else {
            unreachable!("called on convs")
        };
        let (xv, wv) = (node.inputs()[0], node.inputs()[1]);
        let (xs, ws) = (self.ty(xv).shape.clone(), self.ty(wv).shape.clone());
        let ty = self.ty(v);
        let os = ty.shape.clone();
        let dtype = ty.dtype;
        let sp = xs.rank() - 2;
        let groups = *groups;
        // Operands in buffers, row-major.
        for op in [xv, wv] {
            if !self.bufs.contains_key(&op) {
                let n = self.k.bufs.len();
                let b = self.buf(format!("t{n}"), self.ty(op), BufKind::Scratch)?;
                self.elementwise_nest(op, b)?;
            }
        }
        let (xb, wb) = (self.bufs[&xv], self.bufs[&wv]);
        let cg = ws.dim(1).clone();
        let o = ws.dim(0).clone();
        let og = o
            .exact_div(&Dim::constant(groups))
            .ok_or_else(|| Unsupported("output channels not divisible by groups".into()))?;
        let prod = |ds: &[Dim]| -> Result<Dim> {
            ds.iter().try_fold(Dim::constant(1), |a, d| {
                a.mul(d).map_err(|e| Unsupported(e.to_string()))
            })
        };
        let ks = prod(&ws.dims()[2..])?;
        let ps = prod(&os.dims()[2..])?;
        // A gemm pays off with several output channels per group and a long contraction.
        let big = dtype == DType::F32
            && og.as_const() != Some(1)
            && cg
                .mul(&ks)
                .ok()
                .and_then(|d| d.as_const())
                .is_none_or(|n| n >= 8);
        let i64op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        // The input position of output position `p` and window position `k` along spatial
        // axis `d`, and whether it is inside the input.
        // x[n, ch, taps...] with zero outside the input.
        let guarded = |l: &mut Self, n: Expr, ch: Expr, ps: &[Expr], ks: &[Expr]| -> Expr {
            let taps: Vec<Expr> = (0..sp)
                .map(|d| {
                    ps[d].clone() * Expr::i64(stride[d])
                        + Expr::i64(-pad_low[d])
                        + ks[d].clone() * Expr::i64(dilation[d])
                })
                .collect();
            let (clamped, ok) = l.clamp(&taps, &xs.dims()[2..]);
            let mut idx = vec![n, ch];
            idx.extend(clamped);
            let index = l.linear(&idx, &xs);
            let load = Expr::Load {
                buf: xb,
                index: Box::new(index),
            };
            i64op(Op::Select, vec![ok, load, constant(0.0, dtype)], dtype)
        };
        let fixed = [&xs, &ws, &os].iter().all(|s| s.is_static());
        if dtype == DType::F32 && fixed && sp == 2 && cg.as_const() == Some(1) {
            self.conv_planes(v, out, xb, wb)?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        if !big && dtype == DType::F32 && fixed {
            self.conv_rows(v, out, xb, wb)?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        if !big {
            let acc = self.var(dtype);
            self.nest(&os, dtype, |l, idx| {
                let (n, oc) = (idx[0].clone(), idx[1].clone());
                let og_e = l.dim(&og);
                let cg_e = l.dim(&cg);
                let g = Expr::index_op(Op::Div, oc.clone(), og_e);
                let ch = l.var(DType::I64);
                let kv: Vec<VarId> = (0..sp).map(|_| l.var(DType::I64)).collect();
                let kx: Vec<Expr> = kv.iter().map(|&k| Expr::Var(k)).collect();
                let x = guarded(l, n, g * cg_e + Expr::Var(ch), &idx[2..], &kx);
                let mut widx = vec![oc, Expr::Var(ch)];
                widx.extend(kx.iter().cloned());
                let windex = l.linear(&widx, &ws);
                let w = Expr::Load {
                    buf: wb,
                    index: Box::new(windex),
                };
                let update = i64op(
                    Op::Add,
                    vec![Expr::Var(acc), i64op(Op::Mul, vec![x, w], dtype)],
                    dtype,
                );
                let mut loops = vec![(ch, l.dim(&cg))];
                for (d, &k) in kv.iter().enumerate() {
                    loops.push((k, l.dim(ws.dim(2 + d))));
                }
                let index = l.linear(idx, &os);
                let store = Stmt::Store {
                    buf: out,
                    index,
                    value: Expr::Var(acc),
                };
                Ok(accumulate(acc, constant(0.0, dtype), loops, update, store))
            })?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        let ck = cg.mul(&ks).map_err(|e| Unsupported(e.to_string()))?;
        // A pointwise conv (1×1 window, unit strides, no padding) is already a product with the
        // image: x[n, g·cg.., p] is the right operand.
        let one = Dim::constant(1);
        let pointwise = ws.dims()[2..].iter().all(|d| *d == one)
            && stride.iter().all(|&s| s == 1)
            && pad_low.iter().all(|&p| p == 0)
            && xs.dims()[2..] == os.dims()[2..];
        if pointwise {
            let (nv, gv) = (self.var(DType::I64), self.var(DType::I64));
            let (n, g) = (Expr::Var(nv), Expr::Var(gv));
            let (ck_e, ps_e, og_e, o_e) =
                (self.dim(&ck), self.dim(&ps), self.dim(&og), self.dim(&o));
            let c_e = self.dim(xs.dim(1));
            let body = vec![Stmt::Gemm(Box::new(Gemm {
                a: wb,
                a_off: g.clone() * og_e.clone() * ck_e.clone(),
                a_rs: ck_e.clone(),
                a_cs: Expr::i64(1),
                b: xb,
                b_off: (n.clone() * c_e + g.clone() * ck_e.clone()) * ps_e.clone(),
                b_rs: ps_e.clone(),
                b_cs: Expr::i64(1),
                c: out,
                c_off: (n * o_e + g * og_e.clone()) * ps_e.clone(),
                c_rs: ps_e.clone(),
                m: og_e,
                n: ps_e,
                k: ck_e,
                b_packed: None,
            }))];
            let loops = vec![(nv, self.dim(xs.dim(0))), (gv, Expr::i64(groups))];
            self.k.body.extend(unit_free(serial(loops, body)));
            self.bufs.insert(v, out);
            return Ok(());
        }
        // im2col: col[(ch, k...), p...] for one image and group, then W_g · col.
        let col_len = ck.mul(&ps).map_err(|e| Unsupported(e.to_string()))?;
        let col = self.buf(
            format!("col{}", self.k.bufs.len()),
            &TensorType::new(DType::F32, Shape::new(vec![col_len])),
            BufKind::Scratch,
        )?;
        let mut col_shape = vec![cg.clone()];
        col_shape.extend(ws.dims()[2..].iter().cloned());
        col_shape.extend(os.dims()[2..].iter().cloned());
        let col_shape = Shape::new(col_shape);
        let outer = Shape::new(vec![xs.dim(0).clone(), Dim::constant(groups)]);
        let (nv, gv) = (self.var(DType::I64), self.var(DType::I64));
        let (n, g) = (Expr::Var(nv), Expr::Var(gv));
        // With static shapes, a zero-padded copy of the input spares every tap its guard.
        let padded = if fixed {
            let (xd, wd, od) = (static_dims(&xs), static_dims(&ws), static_dims(&os));
            let (pads, dims) = conv_padding(&xd, &wd, &od, stride, dilation, pad_low);
            let zero = Expr::Float(0.0, DType::F32);
            Some(self.padded_copy(xv, xb, &pads, &dims, zero, false)?)
        } else {
            None
        };
        if let (Some((pb, p_shape)), true) = (&padded, sp == 2 && groups == 1) {
            if let Some(()) = self.im2col_blocks(v, out, wb, *pb, p_shape, col)? {
                self.bufs.insert(v, out);
                return Ok(());
            }
        }
        let mut body = Vec::new();
        {
            // The im2col nest, built with `nest` and moved inside the image/group loops.
            let before = self.k.body.len();
            let (n2, g2) = (n.clone(), g.clone());
            self.nest(&col_shape, DType::F32, |l, idx| {
                let cg_e = l.dim(&cg);
                let ch = g2 * cg_e + idx[0].clone();
                let value = match &padded {
                    Some((pb, p_shape)) => {
                        let mut at = vec![n2, ch];
                        for d in 0..sp {
                            at.push(
                                idx[1 + sp + d].clone() * Expr::i64(stride[d])
                                    + idx[1 + d].clone() * Expr::i64(dilation[d]),
                            );
                        }
                        Expr::Load {
                            buf: *pb,
                            index: Box::new(l.linear(&at, p_shape)),
                        }
                    }
                    None => guarded(l, n2, ch, &idx[1 + sp..], &idx[1..1 + sp]),
                };
                let index = l.linear(idx, &col_shape);
                Ok(vec![Stmt::Store {
                    buf: col,
                    index,
                    value,
                }])
            })?;
            body.extend(self.k.body.drain(before..));
        }
        let (ck_e, ps_e, og_e, o_e) = (self.dim(&ck), self.dim(&ps), self.dim(&og), self.dim(&o));
        body.push(Stmt::Gemm(Box::new(Gemm {
            a: wb,
            a_off: g.clone() * og_e.clone() * ck_e.clone(),
            a_rs: ck_e.clone(),
            a_cs: Expr::i64(1),
            b: col,
            b_off: Expr::i64(0),
            b_rs: ps_e.clone(),
            b_cs: Expr::i64(1),
            c: out,
            c_off: (n * o_e + g * og_e.clone()) * ps_e.clone(),
            c_rs: ps_e.clone(),
            m: og_e,
            n: ps_e,
            k: ck_e,
            b_packed: None,
        })));
        let loops = vec![(nv, self.dim(outer.dim(0))), (gv, self.dim(outer.dim(1)))];
        // One image and one group (the common case): the im2col nest is top-level, and so
        // parallel.
        self.k.body.extend(unit_free(serial(loops, body)));
        self.bufs.insert(v, out);
        Ok(())
    }

    /// A static 2-D conv of one image and group as blocks of output rows, in parallel: per
    /// block, the im2col columns of its rows (small enough to stay in cache) and their product
    /// with the weights, written into the block's columns of the result. `None` (nothing
    /// emitted) for shapes this does not cover.
    #[allow(clippy::too_many_arguments)]
    fn im2col_blocks(
        &mut self,
        v: Value,
        out: BufId,
        wb: BufId,
        pb: BufId,
        p_shape: &Shape,
        col: BufId,
    ) -> Result<Option<()>> {
        let StaticConv {
            stride,
            dilation,
            xs,
            ws,
            os,
            ..
        } = self.static_conv(v);
        if xs[0] != 1 {
            return Ok(None);
        }
        let (o, cg, kh, kw, oh, ow) = (ws[0], ws[1], ws[2], ws[3], os[2], os[3]);
        let k = cg * kh * kw;
        // Rows per block: the fewest that make 64 columns (four micro-kernel panels), if that
        // leaves two blocks or more and a block's columns fit in 512 KiB (a core's cache).
        let Some(rows) = (1..=oh / 2).find(|&r| oh % r == 0 && r * ow >= 64) else {
            return Ok(None);
        };
        if rows * ow * k * 4 > 512 << 10 {
            return Ok(None);
        }
        let cols = rows * ow;
        let rb = self.var(DType::I64);
        let blk = Expr::Var(rb);
        let before = self.k.body.len();
        let k_shape = Shape::new(vec![
            Dim::constant(cg),
            Dim::constant(kh),
            Dim::constant(kw),
        ]);
        let shape = Shape::new(vec![
            Dim::constant(cg),
            Dim::constant(kh),
            Dim::constant(kw),
            Dim::constant(rows),
            Dim::constant(ow),
        ]);
        let b2 = blk.clone();
        self.nest(&shape, DType::F32, |l, idx| {
            let (ch, ky, kx, r, ox) = (&idx[0], &idx[1], &idx[2], &idx[3], &idx[4]);
            let oy = b2.clone() * Expr::i64(rows) + r.clone();
            let at = vec![
                Expr::i64(0),
                ch.clone(),
                oy * Expr::i64(stride[0]) + ky.clone() * Expr::i64(dilation[0]),
                ox.clone() * Expr::i64(stride[1]) + kx.clone() * Expr::i64(dilation[1]),
            ];
            let value = Expr::Load {
                buf: pb,
                index: Box::new(l.linear(&at, p_shape)),
            };
            let kk = l.linear(&idx[..3], &k_shape);
            let index = (b2.clone() * Expr::i64(k) + kk) * Expr::i64(cols)
                + r.clone() * Expr::i64(ow)
                + ox.clone();
            Ok(vec![Stmt::Store {
                buf: col,
                index,
                value,
            }])
        })?;
        let mut body: Vec<Stmt> = self.k.body.drain(before..).collect();
        // The nest runs inside the block loop: serial there.
        for s in &mut body {
            if let Stmt::Loop { mark, .. } = s {
                if *mark == Mark::Parallel {
                    *mark = Mark::Serial;
                }
            }
        }
        body.push(Stmt::Gemm(Box::new(Gemm {
            a: wb,
            a_off: Expr::i64(0),
            a_rs: Expr::i64(k),
            a_cs: Expr::i64(1),
            b: col,
            b_off: blk.clone() * Expr::i64(k * cols),
            b_rs: Expr::i64(cols),
            b_cs: Expr::i64(1),
            c: out,
            c_off: blk * Expr::i64(cols),
            c_rs: Expr::i64(oh * ow),
            m: Expr::i64(o),
            n: Expr::i64(cols),
            k: Expr::i64(k),
            b_packed: None,
        })));
        self.k.body.push(Stmt::Loop {
            var: rb,
            extent: Expr::i64(oh / rows),
            mark: Mark::Parallel,
            body,
        });
        Ok(Some(()))
    }

    /// argmax/argmin along `axis`: the first (or last, with `last`) extreme; a NaN is the
    /// extreme, as in the interpreter.
    fn arg_reduce(
        &mut self,
        v: Value,
        axis: usize,
        max: bool,
        last: bool,
        out: BufId,
    ) -> Result<()> {
        let x = self.g.node(v.node).inputs()[0];
        let xs = self.ty(x).shape.clone();
        let xd = self.ty(x).dtype;
        let os = self.ty(v).shape.clone();
        let (bi, bv, k, xvar) = (
            self.var(DType::I64),
            self.var(xd),
            self.var(DType::I64),
            self.var(xd),
        );
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        let b = |x: bool| Expr::Int(x as i64, DType::Bool);
        self.nest(&os, DType::I64, |l, idx| {
            let mut full = idx[..axis].to_vec();
            full.push(Expr::Var(k));
            full.extend_from_slice(&idx[axis..]);
            let load = l.expr(x, &full)?;
            let x = Expr::Var(xvar);
            let cur = Expr::Var(bv);
            let strict = op(
                if max { Op::Gt } else { Op::Lt },
                vec![x.clone(), cur.clone()],
                DType::Bool,
            );
            let eq = op(Op::Eq, vec![x.clone(), cur.clone()], DType::Bool);
            let cmp = op(
                Op::Or,
                vec![strict, op(Op::And, vec![b(last), eq], DType::Bool)],
                DType::Bool,
            );
            let better = if xd.is_float() {
                let xn = op(Op::IsNan, vec![x.clone()], DType::Bool);
                let cn = op(Op::IsNan, vec![cur], DType::Bool);
                let not = |e: Expr| op(Op::Not, vec![e], DType::Bool);
                op(
                    Op::Or,
                    vec![
                        op(
                            Op::And,
                            vec![
                                xn.clone(),
                                op(Op::Or, vec![not(cn.clone()), b(last)], DType::Bool),
                            ],
                            DType::Bool,
                        ),
                        op(
                            Op::And,
                            vec![not(xn), op(Op::And, vec![not(cn), cmp], DType::Bool)],
                            DType::Bool,
                        ),
                    ],
                    DType::Bool,
                )
            } else {
                cmp
            };
            let better = op(
                Op::Or,
                vec![
                    op(Op::Eq, vec![Expr::Var(k), Expr::i64(0)], DType::Bool),
                    better,
                ],
                DType::Bool,
            );
            let extent = l.dim(xs.dim(axis));
            let index = l.linear(idx, &os);
            Ok(vec![
                Stmt::Set {
                    var: bi,
                    value: Expr::i64(0),
                },
                Stmt::Set {
                    var: bv,
                    value: constant(0.0, xd),
                },
                Stmt::Loop {
                    var: k,
                    extent,
                    mark: Mark::Serial,
                    body: vec![
                        Stmt::Set {
                            var: xvar,
                            value: load,
                        },
                        Stmt::Set {
                            var: bi,
                            value: op(
                                Op::Select,
                                vec![better.clone(), Expr::Var(k), Expr::Var(bi)],
                                DType::I64,
                            ),
                        },
                        Stmt::Set {
                            var: bv,
                            value: op(Op::Select, vec![better, x, Expr::Var(bv)], xd),
                        },
                    ],
                },
                Stmt::Store {
                    buf: out,
                    index,
                    value: Expr::Var(bi),
                },
            ])
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }

    /// Pooling: a reduction over each window; taps on padding are skipped (they read a
    /// clamped index and contribute the identity).
    fn reduce_window(&mut self, v: Value, out: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let Op::ReduceWindow {
            kind,
            window,
            stride,
            dilation,
            pad_low,
            ..
        } = node.op()
        else {
            unreachable!("called on reduce_window")
        };
        let x = node.inputs()[0];
        if !self.bufs.contains_key(&x) {
            let n = self.k.bufs.len();
            let b = self.buf(format!("t{n}"), self.ty(x), BufKind::Scratch)?;
            self.elementwise_nest(x, b)?;
        }
        let xb = self.bufs[&x];
        let xs = self.ty(x).shape.clone();
        let os = self.ty(v).shape.clone();
        let dtype = self.ty(v).dtype;
        let (step, init) = match kind {
            ir::ReduceKind::Sum => (Op::Add, constant(0.0, dtype)),
            ir::ReduceKind::Prod => (Op::Mul, constant(1.0, dtype)),
            ir::ReduceKind::Max => (Op::Max, extreme(dtype, false)),
            ir::ReduceKind::Min => (Op::Min, extreme(dtype, true)),
        };
        let static_f32 = dtype == DType::F32 && xs.is_static() && os.is_static() && xs.rank() > 0;
        if static_f32 && matches!(step, Op::Max | Op::Min) {
            // Max and min are exact in any order: accumulate whole output rows in vector
            // loops over a copy of the input padded with the identity.
            let (xd, od) = (static_dims(&xs), static_dims(&os));
            let padded = covering(&xd, &od, window, stride, dilation, pad_low);
            let (pb, p_shape) = self.padded_copy(x, xb, pad_low, &padded, init.clone(), false)?;
            let r = xd.len() - 1;
            let rows = Shape::new(os.dims()[..r].to_vec());
            let (wv, ow) = (self.var(DType::I64), od[r]);
            self.nest(&rows, dtype, |l, idx| {
                let w = Expr::Var(wv);
                let mut oidx = idx.to_vec();
                oidx.push(w.clone());
                let oindex = l.linear(&oidx, &os);
                let row = |body: Stmt| Stmt::Loop {
                    var: wv,
                    extent: Expr::i64(ow),
                    mark: Mark::Vector(4),
                    body: vec![body],
                };
                let kv: Vec<VarId> = (0..=r).map(|_| l.var(DType::I64)).collect();
                let at: Vec<Expr> = (0..=r)
                    .map(|d| {
                        let o = if d == r { w.clone() } else { idx[d].clone() };
                        o * Expr::i64(stride[d]) + Expr::Var(kv[d]) * Expr::i64(dilation[d])
                    })
                    .collect();
                let tap = Expr::Load {
                    buf: pb,
                    index: Box::new(l.linear(&at, &p_shape)),
                };
                let cur = Expr::Load {
                    buf: out,
                    index: Box::new(oindex.clone()),
                };
                let update = row(Stmt::Store {
                    buf: out,
                    index: oindex.clone(),
                    value: Expr::Op {
                        op: step.clone(),
                        args: vec![cur, tap],
                        dtype,
                    },
                });
                let loops = kv
                    .iter()
                    .enumerate()
                    .map(|(d, &k)| (k, Expr::i64(window[d])))
                    .collect();
                let mut body = vec![row(Stmt::Store {
                    buf: out,
                    index: oindex,
                    value: init.clone(),
                })];
                body.extend(unit_free(serial(loops, vec![update])));
                Ok(body)
            })?;
            self.bufs.insert(v, out);
            return Ok(());
        }
        let (acc_ty, init) = accumulator(&step, dtype, init);
        let wide = acc_ty != dtype;
        let acc = self.var(acc_ty);
        let op = |op: Op, args: Vec<Expr>, dtype: DType| Expr::Op { op, args, dtype };
        self.nest(&os, dtype, |l, idx| {
            let kv: Vec<VarId> = (0..xs.rank()).map(|_| l.var(DType::I64)).collect();
            let taps: Vec<Expr> = kv
                .iter()
                .enumerate()
                .map(|(d, &k)| {
                    idx[d].clone() * Expr::i64(stride[d])
                        + Expr::i64(-pad_low[d])
                        + Expr::Var(k) * Expr::i64(dilation[d])
                })
                .collect();
            let (at, ok) = l.clamp(&taps, xs.dims());
            let index = l.linear(&at, &xs);
            let mut xval = Expr::Load {
                buf: xb,
                index: Box::new(index),
            };
            if wide {
                xval = cast(xval, DType::F64);
            }
            let next = op(step.clone(), vec![Expr::Var(acc), xval], acc_ty);
            let update = op(Op::Select, vec![ok, next, Expr::Var(acc)], acc_ty);
            let loops = kv
                .iter()
                .enumerate()
                .map(|(d, &k)| (k, Expr::i64(window[d])))
                .collect();
            let index = l.linear(idx, &os);
            let value = if wide {
                cast(Expr::Var(acc), dtype)
            } else {
                Expr::Var(acc)
            };
            let store = Stmt::Store {
                buf: out,
                index,
                value,
            };
            Ok(accumulate(acc, init, loops, update, store))
        })?;
        self.bufs.insert(v, out);
        Ok(())
    }

    /// Statements that resolve the (possibly negative) index `raw` against extent `n` into a
    /// new i64 variable, ending the kernel with INDEX_OUT_OF_RANGE when it is outside.
    fn resolve(&mut self, raw: Expr, n: Expr) -> (Vec<Stmt>, VarId) {
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
            Stmt::Check {
                cond: op(
                    Op::And,
                    vec![
                        op(Op::Ge, vec![Expr::Var(u), Expr::i64(0)], DType::Bool),
                        op(Op::Lt, vec![Expr::Var(u), n], DType::Bool),
                    ],
                    DType::Bool,
                ),
                code: codes::INDEX_OUT_OF_RANGE,
            },
        ];
        (stmts, u)
    }

    fn gather(&mut self, v: Value, axis: usize, b: BufId) -> Result<()> {
        let node = self.g.node(v.node);
        let (x, ids) = (node.inputs()[0], node.inputs()[1]);
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

    /// ONNX GatherND: the last axis of the indices addresses data axes `batch_dims..`; the
    /// result is the addressed slices.
    fn gather_nd(&mut self, v: Value, batch_dims: usize, b: BufId) -> Result<()> {
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
    fn scatter_nd(&mut self, v: Value, reduction: ir::ScatterReduction, b: BufId) -> Result<()> {
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
    fn topk(
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

    fn concat(&mut self, v: Value, axis: usize, b: BufId) -> Result<()> {
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

/// The axes of a dot's operands: batch, contracted and free (in order), per side.
struct DotAxes {
    lb: Vec<usize>,
    rb: Vec<usize>,
    lc: Vec<usize>,
    rc: Vec<usize>,
    lf: Vec<usize>,
    rf: Vec<usize>,
}

impl DotAxes {
    fn new(attrs: [&Vec<i64>; 4], lrank: usize, rrank: usize) -> DotAxes {
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

/// Serial loops (outermost first) around `body`.
/// The extents of a static shape.
fn static_dims(s: &Shape) -> Vec<i64> {
    s.dims()
        .iter()
        .map(|d| d.as_const().expect("a static shape"))
        .collect()
}

/// Extents of a padded copy of an input of extents `x` that covers every tap of windows
/// `window` (stride, dilation, low padding per axis) producing `out`.
fn covering(
    x: &[i64],
    out: &[i64],
    window: &[i64],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
) -> Vec<i64> {
    (0..x.len())
        .map(|d| {
            let last = (out[d] - 1) * stride[d] + (window[d] - 1) * dilation[d] + 1;
            (x[d] + pad_low[d]).max(last)
        })
        .collect()
}

/// The low padding and extents of a conv input's padded copy ([`covering`] over the spatial
/// axes of input `x`, weight `w` and result `out`; batch and channels as they are).
fn conv_padding(
    x: &[i64],
    w: &[i64],
    out: &[i64],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
) -> (Vec<i64>, Vec<i64>) {
    let mut pads = vec![0, 0];
    pads.extend_from_slice(pad_low);
    let mut padded = x[..2].to_vec();
    padded.extend(covering(
        &x[2..],
        &out[2..],
        &w[2..],
        stride,
        dilation,
        pad_low,
    ));
    (pads, padded)
}

fn serial(loops: Vec<(VarId, Expr)>, body: Vec<Stmt>) -> Vec<Stmt> {
    loops.into_iter().rev().fold(body, |body, (var, extent)| {
        vec![Stmt::Loop {
            var,
            extent,
            mark: Mark::Serial,
            body,
        }]
    })
}

/// A conv node's attributes, operands and static shapes (see `Lowering::static_conv`).
struct StaticConv {
    stride: Vec<i64>,
    dilation: Vec<i64>,
    pad_low: Vec<i64>,
    groups: i64,
    xv: Value,
    wv: Value,
    xs: Vec<i64>,
    ws: Vec<i64>,
    os: Vec<i64>,
    os_shape: Shape,
}

/// Statements with loops of extent 1 replaced by their bodies (the variable replaced by 0).
fn unit_free(body: Vec<Stmt>) -> Vec<Stmt> {
    let mut out = Vec::new();
    for s in body {
        match s {
            Stmt::Loop {
                var,
                extent: Expr::Int(1, _),
                body,
                ..
            } => {
                let mut body = body;
                kernel::stages::replace_var(&mut body, var, &Expr::i64(0));
                out.extend(unit_free(body));
            }
            Stmt::Loop {
                var,
                extent,
                mark,
                body,
            } => out.push(Stmt::Loop {
                var,
                extent,
                mark,
                body: unit_free(body),
            }),
            s => out.push(s),
        }
    }
    out
}

/// `acc = init`, then `acc = update` inside serial `loops`, then `store`.
fn accumulate(
    acc: VarId,
    init: Expr,
    loops: Vec<(VarId, Expr)>,
    update: Expr,
    store: Stmt,
) -> Vec<Stmt> {
    let mut body = vec![Stmt::Set {
        var: acc,
        value: init,
    }];
    body.extend(serial(
        loops,
        vec![Stmt::Set {
            var: acc,
            value: update,
        }],
    ));
    body.push(store);
    body
}

/// The dtype and initial value of an accumulator reducing by `step` into `dtype`: f32 sums
/// and products accumulate in f64, as the interpreter does (cancellation in long sums then
/// costs nothing).
fn accumulator(step: &Op, dtype: DType, init: Expr) -> (DType, Expr) {
    if dtype == DType::F32 && matches!(step, Op::Add | Op::Mul) {
        let init = match init {
            Expr::Float(v, _) => Expr::Float(v, DType::F64),
            e => e,
        };
        (DType::F64, init)
    } else {
        (dtype, init)
    }
}

/// `e` converted to `dtype` (nothing when it has it already, for i64 indices).
fn cast(e: Expr, dtype: DType) -> Expr {
    if dtype == DType::I64 && matches!(e, Expr::Var(_) | Expr::Int(_, DType::I64)) {
        return e;
    }
    Expr::Op {
        op: Op::Cast {
            dtype,
            saturate: false,
        },
        args: vec![e],
        dtype,
    }
}

fn constant(v: f64, dtype: DType) -> Expr {
    if dtype.is_float() {
        Expr::Float(v, dtype)
    } else {
        Expr::Int(v as i64, dtype)
    }
}

/// The identity of max (`min = false`) or min over `dtype`.
fn extreme(dtype: DType, min: bool) -> Expr {
    let sign = if min { 1.0 } else { -1.0 };
    match dtype {
        DType::F32 | DType::F64 => Expr::Float(sign * f64::INFINITY, dtype),
        DType::I8 => Expr::Int(if min { i8::MAX as i64 } else { i8::MIN as i64 }, dtype),
        DType::I16 => Expr::Int(
            if min {
                i16::MAX as i64
            } else {
                i16::MIN as i64
            },
            dtype,
        ),
        DType::I32 => Expr::Int(
            if min {
                i32::MAX as i64
            } else {
                i32::MIN as i64
            },
            dtype,
        ),
        DType::U8 => Expr::Int(if min { u8::MAX as i64 } else { 0 }, dtype),
        DType::U16 => Expr::Int(if min { u16::MAX as i64 } else { 0 }, dtype),
        DType::U32 => Expr::Int(if min { u32::MAX as i64 } else { 0 }, dtype),
        // u64::MAX as the bit pattern -1.
        DType::U64 => Expr::Int(if min { -1 } else { 0 }, dtype),
        _ => Expr::Int(if min { i64::MAX } else { i64::MIN }, dtype),
    }
}

/// A one-element constant as a scalar expression.
fn scalar(t: &Tensor) -> Result<Expr> {
    use ir::Data;
    let d = t.data();
    Ok(match d {
        Data::F32(v) => Expr::Float(v[0] as f64, DType::F32),
        Data::F64(v) => Expr::Float(v[0], DType::F64),
        Data::I8(v) => Expr::Int(v[0] as i64, DType::I8),
        Data::I16(v) => Expr::Int(v[0] as i64, DType::I16),
        Data::I32(v) => Expr::Int(v[0] as i64, DType::I32),
        Data::I64(v) => Expr::Int(v[0], DType::I64),
        Data::U8(v) => Expr::Int(v[0] as i64, DType::U8),
        Data::U16(v) => Expr::Int(v[0] as i64, DType::U16),
        Data::U32(v) => Expr::Int(v[0] as i64, DType::U32),
        Data::U64(v) => Expr::Int(v[0] as i64, DType::U64),
        Data::Bool(v) => Expr::Int(v[0] as i64, DType::Bool),
        _ => return unsupported(format!("a {} constant", d.dtype())),
    })
}
