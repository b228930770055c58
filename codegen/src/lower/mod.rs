//! Lowering of a fused kernel body (or a single graph node) to the loop-level kernel IR.
//!
//! The schedule is "materialize roots, inline the rest": reductions, contractions, gathers,
//! concatenations, outputs and elementwise values read more than once get a buffer and a loop
//! nest of their own; views (broadcast, reshape, transpose, slice) become index arithmetic,
//! and single-use elementwise values become expressions inside their consumer's loop.
//! Anything else is [`Unsupported`], and the caller runs that node another way.

use std::collections::{HashMap, HashSet};

use ir::{DType, Dim, Graph, NodeId, Op, Shape, Tensor, TensorType, Value};

use kernel::target::Machine;
use kernel::{
    codes, is_native, Buf, BufId, BufKind, Conv2d, Expr, Gemm, Kernel, Lowered, Mark, Stmt,
    Unsupported, VarId,
};

mod blocked;
mod contract;
mod conv;
mod epilogue;
mod gather;
mod index;
mod qconv;
mod recurrent;
mod reduce;
mod resample;
mod tree;
mod window;

type Result<T> = std::result::Result<T, Unsupported>;

fn unsupported<T>(what: impl Into<String>) -> Result<T> {
    Err(Unsupported(what.into()))
}

/// Lowers a graph (a fused body) to one kernel named `name`, for the machine Cranelift targets.
pub fn lower(g: &Graph, name: &str) -> Result<Lowered> {
    lower_for(g, name, &Machine::CRANELIFT)
}

/// Lowers a graph to one kernel named `name` for `machine` (its vector width, its block size).
pub fn lower_for(g: &Graph, name: &str, machine: &Machine) -> Result<Lowered> {
    lower_with(g, name, machine, &mut |_, _| {})
}

/// [`lower_for`], calling `after` with the kernel as lowering made it (`"lower"`) and after
/// each of the kernel transforms ([`kernel::transforms::PIPELINE`], by name): what
/// `kiln opt --kernels --print-after` shows.
pub fn lower_with(
    g: &Graph,
    name: &str,
    machine: &Machine,
    after: &mut dyn FnMut(&str, &Kernel),
) -> Result<Lowered> {
    let mut l = Lowering::new(g, name, *machine)?;
    l.run()?;
    after("lower", &l.k);
    kernel::transforms::run(&mut l.k, &mut |t, k| after(t.name, k));
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
    machine: Machine,
    /// Values already computed by a routine's fused epilogue, or never needed on their own
    /// (the steps inside one).
    fused: HashSet<Value>,
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
    fn new(g: &'g Graph, name: &str, machine: Machine) -> Result<Lowering<'g>> {
        // Lowering trusts types, operand counts and attributes: it reads only verified graphs
        // (whoever calls it), in their topological order.
        let order = ir::verify(g)
            .map_err(|e| Unsupported(format!("the graph does not verify: {e}")))?
            .order()
            .to_vec();
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
            machine,
            fused: HashSet::new(),
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
            if self.fused.contains(&v) {
                continue;
            }
            let output_buf = self.bufs.get(&v).copied().filter(|&b| {
                self.k.bufs[b].kind == BufKind::Output && !matches!(op, Op::Param { .. })
            });
            match op {
                Op::Param { .. } => {}
                Op::Constant { .. } => self.constant(id)?,
                Op::TopK { k, axis, largest } => {
                    let bv = self.target(v, output_buf)?;
                    let bi = self.result(Value::new(id, 1))?;
                    self.topk(v, *k, *axis as usize, *largest, bv, bi)?;
                }
                Op::DynamicQuantize => {
                    let q = self.target(v, output_buf)?;
                    let s = self.result(Value::new(id, 1))?;
                    let z = self.result(Value::new(id, 2))?;
                    self.dynamic_quantize(v, [q, s, z])?;
                }
                Op::Lstm { reverse } | Op::Gru { reverse, .. } | Op::Rnn { reverse } => {
                    let mut outs = vec![self.target(v, output_buf)?];
                    for i in 1..node.types().len() as u32 {
                        outs.push(self.result(Value::new(id, i))?);
                    }
                    self.recurrence(v, *reverse, &outs)?;
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
                Op::Dot { .. } | Op::Qdot { .. } => {
                    let chain = if self.gemm_columns(v) {
                        self.epilogue_chain(v, epilogue::Along::Columns)
                    } else {
                        None
                    };
                    self.with_chain(v, output_buf, chain, Self::dot)?;
                }
                Op::Qconv { .. } => {
                    let chain = if self.qconv_calls(v) {
                        self.epilogue_chain(v, epilogue::Along::Channels)
                    } else {
                        None
                    };
                    // Stored as bytes where its quantizer follows the chain (the kernel's
                    // result, or what is made blocked after); stored blocked where the result
                    // is only made blocked after (and no residual is laid out as its planes).
                    let end = chain.as_ref().map_or(v, |c| c.end);
                    let planar_res = chain.as_ref().is_some_and(|c| c.has_res());
                    let tail = self.qconv_calls(v).then(|| self.byte_tail(end)).flatten();
                    let (last, tail) = match tail {
                        Some((bytes, inner, z)) => (bytes, Some((inner, z))),
                        None => (end, None),
                    };
                    match (self.blocked_result(last).filter(|_| !planar_res), tail) {
                        (Some(views), tail) => {
                            self.qconv_blocked(v, chain.as_ref(), views, tail)?
                        }
                        (None, Some(tail)) => self.qconv_bytes(v, chain.as_ref(), last, tail)?,
                        (None, None) => self.with_chain(v, output_buf, chain, Self::qconv)?,
                    }
                }
                Op::Qdot4 { .. } => {
                    let chain = self.epilogue_chain(v, epilogue::Along::Columns);
                    self.with_chain(v, output_buf, chain, Self::qdot4)?;
                }
                Op::Gather { axis } => {
                    let b = self.target(v, output_buf)?;
                    self.gather(v, *axis as usize, b)?;
                }
                Op::Conv { .. } => {
                    // The elementwise steps after it, applied as the routine stores: it
                    // computes the last step's value.
                    let chain = if self.conv_calls(v) {
                        self.epilogue_chain(v, epilogue::Along::Channels)
                    } else {
                        None
                    };
                    self.with_chain(v, output_buf, chain, Self::conv)?;
                }
                Op::ConvBlocked { .. } => {
                    let chain = if self.blocked_calls(v) {
                        self.epilogue_chain(v, epilogue::Along::Blocked)
                    } else {
                        None
                    };
                    self.with_chain(v, output_buf, chain, Self::conv_blocked)?;
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
                Op::Resample { .. } => {
                    let b = self.target(v, output_buf)?;
                    self.resample(v, b)?;
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
                Op::TreeWalk => {
                    let b = self.target(v, output_buf)?;
                    self.tree_walk(v, b)?;
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

    /// A buffer for constant `id` unless it has one or one element (an expression then).
    fn constant(&mut self, id: NodeId) -> Result<()> {
        let node = self.g.node(id);
        let v = Value::new(id, 0);
        if let Op::Constant { value } = node.op() {
            if value.tensor.numel() != 1 && !self.bufs.contains_key(&v) {
                let b = self.buf(
                    format!("c{}", self.consts.len()),
                    &node.types()[0],
                    BufKind::Input,
                )?;
                self.consts.push((b, value.tensor.clone()));
                self.bufs.insert(v, b);
            }
        }
        Ok(())
    }

    /// `v` computed by `lower` into its buffer — or, with a `chain` of steps after it, the
    /// chain's end computed into the end's buffer (`v` itself never is).
    fn with_chain(
        &mut self,
        v: Value,
        output_buf: Option<BufId>,
        chain: Option<epilogue::Chain>,
        lower: fn(&mut Self, Value, BufId, Option<&epilogue::Chain>) -> Result<()>,
    ) -> Result<()> {
        let Some(chain) = chain else {
            let b = self.target(v, output_buf)?;
            return lower(self, v, b, None);
        };
        self.computed_as(v, chain.end, &chain.inner, |l, b| {
            lower(l, v, b, Some(&chain))
        })
    }

    /// `v`'s node lowered by `lower` into the buffer of `result` (its output buffer, or new
    /// scratch), which then holds `result`; `result` and the values `inside` (computed on
    /// the way) need no code of their own.
    fn computed_as(
        &mut self,
        v: Value,
        result: Value,
        inside: &[Value],
        lower: impl FnOnce(&mut Self, BufId) -> Result<()>,
    ) -> Result<()> {
        let out =
            (self.bufs.get(&result).copied()).filter(|&b| self.k.bufs[b].kind == BufKind::Output);
        let b = self.target(result, out)?;
        lower(self, b)?;
        self.bufs.remove(&v);
        self.bufs.insert(result, b);
        self.fused.insert(result);
        self.fused.extend(inside.iter().copied());
        Ok(())
    }

    /// The buffer a node's later result `v` (not a param's) is computed into: the output
    /// buffer it was given, or new scratch.
    fn result(&mut self, v: Value) -> Result<BufId> {
        let output = self
            .bufs
            .get(&v)
            .copied()
            .filter(|&b| self.k.bufs[b].kind == BufKind::Output);
        self.target(v, output)
    }

    /// The buffer holding `v` densely in row-major order: its own, the one a view of it reads
    /// when that view is laid out so (a reshape; axes of extent 1 at any stride), or scratch
    /// it is computed into (another view, a constant scalar, an elementwise value) — what
    /// routines read.
    pub(super) fn dense(&mut self, v: Value) -> Result<BufId> {
        if let Some(&b) = self.bufs.get(&v) {
            return Ok(b);
        }
        if let Some((b, st)) = self.strided(v) {
            let shape = &self.ty(v).shape;
            let laid_out = (0..shape.rank())
                .rev()
                .try_fold(Dim::constant(1), |step, a| {
                    (st[a] == step || shape.dim(a).as_const() == Some(1))
                        .then(|| step.mul(shape.dim(a)).ok())
                        .flatten()
                });
            if laid_out.is_some() {
                return Ok(b);
            }
        }
        let n = self.k.bufs.len();
        let b = self.buf(format!("t{n}"), self.ty(v), BufKind::Scratch)?;
        self.elementwise_nest(v, b)?;
        self.bufs.insert(v, b);
        Ok(b)
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
        let mut loops: Vec<(VarId, &Dim)> = vars
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
        if let Some(i) = innermost(&body, &loops) {
            let l = loops.remove(i);
            loops.push(l);
        }
        let n = loops.len();
        for (a, &(var, d)) in loops.iter().enumerate().rev() {
            let mark = if a == 0 && (n > 1 || !leaf) {
                Mark::Parallel
            } else if a + 1 == n && leaf && matches!(dtype, DType::F32 | DType::U8 | DType::I8) {
                Mark::Vector(self.machine.vector_lanes)
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
}

/// Serial loops (outermost first) around `body`.
/// The extents of a static shape.
fn static_dims(s: &Shape) -> Vec<i64> {
    s.dims()
        .iter()
        .map(|d| d.as_const().expect("a static shape"))
        .collect()
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

/// `e` converted to `dtype` (nothing when it has it already, for i64 indices). Kernels
/// compute native dtypes only, where `saturate` means nothing: it keeps its default, which
/// the kernel text leaves unprinted.
fn cast(e: Expr, dtype: DType) -> Expr {
    if dtype == DType::I64 && matches!(e, Expr::Var(_) | Expr::Int(_, DType::I64)) {
        return e;
    }
    Expr::Op {
        op: Op::Cast {
            dtype,
            saturate: true,
        },
        args: vec![e],
        dtype,
    }
}

/// The loop of a nest (`loops`, outermost first, around an elementwise `body` of stores and
/// temporaries) to run innermost instead of the last, when more of the body's accesses walk
/// its variable contiguously: an elementwise kernel that transposes (a QOperator RoPE's
/// rotated heads) reads its operands along another axis than it writes, and vector loops
/// read strided operands lane by lane. Only where no load reads a buffer the body stores
/// (its iterations independent in any order) and the loop has at least 8 iterations.
fn innermost(body: &[Stmt], loops: &[(VarId, &Dim)]) -> Option<usize> {
    let (mut stores, mut indices) = (Vec::new(), Vec::new());
    let mut loads = Vec::new();
    for s in body {
        match s {
            Stmt::Store { buf, index, value } => {
                stores.push(*buf);
                indices.push(index);
                loads.push(value);
            }
            Stmt::Set { value, .. } => loads.push(value),
            _ => return None,
        }
    }
    let mut reads = Vec::new();
    for e in &loads {
        e.walk(&mut |e| {
            if let Expr::Load { buf, index } = e {
                reads.push((*buf, (**index).clone()));
            }
        });
    }
    if reads.iter().any(|(b, _)| stores.contains(b)) {
        return None;
    }
    let last = loops.len().checked_sub(1)?;
    let walks = |var: VarId| {
        let unit = |e: &Expr| kernel::stages::coefficient(e, var) == Some(1);
        let read = reads.iter().filter(|(_, i)| unit(i)).count();
        read + indices.iter().filter(|i| unit(i)).count()
    };
    let now = walks(loops[last].0);
    let (best, score) = (0..last)
        .filter(|&i| loops[i].1.as_const().is_none_or(|e| e >= 8))
        .map(|i| (i, walks(loops[i].0)))
        .max_by_key(|&(i, score)| (score, i))?;
    (score > now).then_some(best)
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
