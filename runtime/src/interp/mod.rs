//! The reference interpreter: executes every op for every dtype it accepts, slowly and
//! carefully. It is the oracle every optimization and backend is checked against, so its code
//! favours obviousness: floats compute in f64 and round once, sums are compensated, integer
//! arithmetic wraps to the dtype width, and out-of-range indices are errors.

mod compute;
pub mod dynamic;
mod index;
pub mod kernels;
mod wide;

use std::collections::HashMap;

use ir::{Data, Dim, Graph, Op, Tensor, TensorType, Value, Verified};

use compute::{DotDims, Window};
use wide::{narrow, widen};

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    #[error("expected {expected} inputs, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("input \"{name}\": {message}")]
    Input { name: String, message: String },
    #[error("symbol `{0}` is not bound by any input; bind it explicitly")]
    Unbound(String),
    #[error("{node}: {message}")]
    Node { node: String, message: String },
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Values for symbols that no input shape determines.
    pub bindings: HashMap<String, i64>,
    /// The largest tensor (in bytes) a run may create; beyond it the run stops with an error
    /// instead of exhausting memory.
    pub max_tensor_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bindings: HashMap::new(),
            max_tensor_bytes: 8 << 30,
        }
    }
}

/// One elementwise op (unary, binary, compare, select, cast) on operands of one length,
/// giving `dtype`: the semantics compiled kernels are checked against.
pub fn elementwise(op: &Op, args: &[&Data], dtype: ir::DType) -> Result<Data, String> {
    let arity = |n: usize| match args.len() == n {
        true => Ok(()),
        false => Err(format!("`{}` takes {n} operands", op.mnemonic())),
    };
    match op {
        _ if op.kind() == ir::OpKind::Unary => {
            arity(1)?;
            Ok(narrow(&wide::unary(op, &widen(args[0])), dtype))
        }
        _ if op.kind() == ir::OpKind::Binary => {
            arity(2)?;
            if args[0].dtype() != args[1].dtype() {
                return Err(format!(
                    "`{}` of a {} and a {}",
                    op.mnemonic(),
                    args[0].dtype(),
                    args[1].dtype()
                ));
            }
            let r = wide::binary(op, &widen(args[0]), &widen(args[1]), args[0].dtype())?;
            Ok(narrow(&r, dtype))
        }
        Op::Select => {
            arity(3)?;
            if args[1].dtype() != dtype || args[2].dtype() != dtype {
                return Err(format!(
                    "`select` of a {} and a {} giving {dtype}",
                    args[1].dtype(),
                    args[2].dtype()
                ));
            }
            match args[0] {
                Data::Bool(c) => Ok(compute::select(c, args[1], args[2])),
                _ => Err("select's condition is not bool".into()),
            }
        }
        Op::Cast { dtype, saturate } => {
            arity(1)?;
            Ok(match widen(args[0]) {
                wide::Wide::F(v) if dtype.is_narrow() && dtype.is_float() => {
                    Data::from_f64s_narrow(*dtype, &v, *saturate)
                }
                w => narrow(&w, *dtype),
            })
        }
        _ => Err(format!("`{}` is not elementwise", op.mnemonic())),
    }
}

/// Runs a verified graph on inputs given in parameter order.
pub fn run(v: &Verified, inputs: &[Tensor]) -> Result<Vec<Tensor>, InterpError> {
    run_with(v, inputs, &Options::default())
}

/// Binds every symbol of the parameter shapes from the input tensors, checking that constant
/// dims match and that each symbol gets one value.
pub fn bind_symbols(
    g: &Graph,
    inputs: &[Tensor],
    explicit: &HashMap<String, i64>,
) -> Result<HashMap<String, i64>, InterpError> {
    let params: Vec<(&str, &TensorType)> = g
        .params()
        .iter()
        .map(|&p| match g.node(p).op() {
            Op::Param { name, ty } => (name.as_str(), ty),
            _ => unreachable!("params are param nodes"),
        })
        .collect();
    bind_params(&params, inputs, explicit)
}

/// [`bind_symbols`] for parameters given by name and type, in order.
pub fn bind_params(
    params: &[(&str, &TensorType)],
    inputs: &[Tensor],
    explicit: &HashMap<String, i64>,
) -> Result<HashMap<String, i64>, InterpError> {
    if inputs.len() != params.len() {
        return Err(InterpError::InputCount {
            expected: params.len(),
            got: inputs.len(),
        });
    }
    if let Some((s, v)) = explicit.iter().find(|(_, &v)| v < 0) {
        return Err(InterpError::Input {
            name: s.clone(),
            message: format!("a dimension cannot be {v}"),
        });
    }
    let mut env = explicit.clone();
    let mut deferred = Vec::new();
    for (&(name, ty), t) in params.iter().zip(inputs) {
        let name = &name.to_string();
        let fail = |message: String| InterpError::Input {
            name: name.clone(),
            message,
        };
        if t.dtype() != ty.dtype || t.shape().len() != ty.rank() {
            return Err(fail(format!(
                "expected {ty}, got {}{:?}",
                t.dtype(),
                t.shape()
            )));
        }
        for (a, (d, &n)) in ty.shape.dims().iter().zip(t.shape()).enumerate() {
            let n = n as i64;
            match (d.as_const(), d.as_sym()) {
                (Some(c), _) if c != n => {
                    return Err(fail(format!("axis {a} has size {n}, expected {c}")))
                }
                (Some(_), _) => {}
                (None, Some(s)) => match env.get(s) {
                    Some(&prev) if prev != n => {
                        return Err(fail(format!(
                            "axis {a} has size {n}, but symbol `{s}` is already bound to {prev}"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        env.insert(s.to_string(), n);
                    }
                },
                (None, None) => deferred.push((name.clone(), a, d.clone(), n)),
            }
        }
    }
    for (name, a, d, n) in deferred {
        let v = d
            .eval(&|s| env.get(s).copied())
            .map_err(|e| InterpError::Input {
                name: name.clone(),
                message: format!("axis {a} is {d}: {e}"),
            })?;
        if v != n {
            return Err(InterpError::Input {
                name,
                message: format!("axis {a} has size {n}, but {d} = {v}"),
            });
        }
    }
    Ok(env)
}

struct Interp<'a> {
    g: &'a Graph,
    env: HashMap<String, i64>,
    numbering: HashMap<Value, usize>,
    max_bytes: u64,
}

/// Runs a verified graph with options.
pub fn run_with(
    v: &Verified,
    inputs: &[Tensor],
    opts: &Options,
) -> Result<Vec<Tensor>, InterpError> {
    let g = v.graph();
    let env = bind_symbols(g, inputs, &opts.bindings)?;
    let mut it = Interp {
        g,
        env,
        numbering: g.numbering().unwrap_or_default(),
        max_bytes: opts.max_tensor_bytes,
    };
    // Remaining uses of each value, so intermediates are freed as soon as possible.
    let mut uses: HashMap<Value, usize> = HashMap::new();
    for &id in v.order() {
        for &inp in g.node(id).inputs() {
            *uses.entry(inp).or_default() += 1;
        }
    }
    for (_, out) in g.outputs() {
        *uses.entry(*out).or_default() += 1;
    }
    let param_pos: HashMap<_, _> = g
        .params()
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i))
        .collect();
    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for &id in v.order() {
        let node = g.node(id);
        let results = match param_pos.get(&id) {
            Some(&i) => vec![inputs[i].clone()],
            None => {
                let args: Vec<&Tensor> = node.inputs().iter().map(|v| &values[v]).collect();
                match node.op().kind() == ir::OpKind::Dynamic {
                    true => {
                        let outs = dynamic::compute(node.op(), &args).map_err(|message| {
                            InterpError::Node {
                                node: it.label(id),
                                message,
                            }
                        })?;
                        bind_results(&mut it.env, node.types(), &outs).map_err(|message| {
                            InterpError::Node {
                                node: it.label(id),
                                message,
                            }
                        })?;
                        outs
                    }
                    false => it.node(id, &args)?,
                }
            }
        };
        for &inp in node.inputs() {
            let left = uses.get_mut(&inp).expect("every input was counted");
            *left -= 1;
            if *left == 0 {
                values.remove(&inp);
            }
        }
        for (i, t) in results.into_iter().enumerate() {
            let val = Value::new(id, i as u32);
            if uses.get(&val).copied().unwrap_or(0) > 0 {
                values.insert(val, t);
            }
        }
    }
    Ok(g.outputs().iter().map(|(_, v)| values[v].clone()).collect())
}

/// Binds the symbols a data-dependent node defines from its results' shapes (`types` are
/// the node's declared result types), checking every other dim against the binding.
pub fn bind_results(
    env: &mut HashMap<String, i64>,
    types: &[TensorType],
    outs: &[Tensor],
) -> Result<(), String> {
    if types.len() != outs.len() {
        return Err(format!(
            "{} results where the node has {}",
            outs.len(),
            types.len()
        ));
    }
    for (ty, t) in types.iter().zip(outs) {
        if ty.rank() != t.shape().len() {
            return Err(format!(
                "a result of shape {:?} where {ty} was declared",
                t.shape()
            ));
        }
        for (d, &n) in ty.shape.dims().iter().zip(t.shape()) {
            if let Some(s) = d.as_sym() {
                env.entry(s.to_string()).or_insert(n as i64);
            }
            let v = d
                .eval(&|s| env.get(s).copied())
                .map_err(|e| e.to_string())?;
            if v != n as i64 {
                return Err(format!(
                    "a result of shape {:?} where {ty} was declared",
                    t.shape()
                ));
            }
        }
    }
    Ok(())
}

/// Whether a `refine` holds: the operand's run-time dims (`got`, typed `have`) are those the
/// node restates them as (`want`, evaluated to `need`); the error names the axis and both dims.
pub fn refine_check(
    have: &ir::Shape,
    want: &ir::Shape,
    got: &[usize],
    need: &[usize],
) -> Result<(), String> {
    for (a, (&x, &y)) in got.iter().zip(need).enumerate() {
        if x != y {
            let spell = |d: &Dim, v: usize| match d.as_const() {
                Some(_) => v.to_string(),
                None => format!("{d} = {v}"),
            };
            return Err(format!(
                "axis {a} has size {}, where the model needs {} (a fact the import could not prove, \
                 checked at run time)",
                spell(have.dim(a), x),
                spell(want.dim(a), y)
            ));
        }
    }
    Ok(())
}

fn usizes(v: &[i64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

impl Interp<'_> {
    fn label(&self, id: ir::NodeId) -> String {
        let node = self.g.node(id);
        let n = self
            .numbering
            .get(&Value::new(id, 0))
            .map_or("%?".into(), |n| format!("%{n}"));
        let mut s = String::new();
        if let Some(loc) = node.origin().loc {
            s.push_str(&format!("{loc}: "));
        }
        s.push_str(&format!("{n} ({})", node.op().mnemonic()));
        if let Some(name) = &node.origin().name {
            s.push_str(&format!(" from node \"{name}\""));
        }
        s
    }

    fn eval_dim(&self, d: &Dim) -> Result<i64, String> {
        d.eval(&|s| self.env.get(s).copied())
            .map_err(|e| e.to_string())
    }

    /// `op` with the symbols in its attributes replaced by their bound values.
    fn bound_op(&self, op: &Op) -> Result<Op, String> {
        op.map_dims(&|d| self.eval_dim(d).map(Dim::Const))
    }

    /// Evaluates a node: concrete result shapes from the declared types, then the op.
    fn node(&self, id: ir::NodeId, args: &[&Tensor]) -> Result<Vec<Tensor>, InterpError> {
        let node = self.g.node(id);
        let fail = |message: String| InterpError::Node {
            node: self.label(id),
            message,
        };
        let mut shapes = Vec::new();
        for ty in node.types() {
            let dims = ty
                .shape
                .eval(&|s| self.env.get(s).copied())
                .map_err(|e| match e {
                    ir::DimError::Unbound(s) => InterpError::Unbound(s),
                    e => fail(e.to_string()),
                })?;
            if let Some(d) = dims.iter().find(|&&d| d < 0) {
                return Err(fail(format!("result dimension evaluates to {d}")));
            }
            let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let bytes = numel.and_then(|n| ty.dtype.storage_bytes(n));
            if bytes.is_none_or(|b| b > self.max_bytes) {
                return Err(fail(format!(
                    "result {}{dims:?} exceeds the limit of {} bytes per tensor",
                    ty.dtype, self.max_bytes
                )));
            }
            shapes.push(usizes(&dims));
        }
        if let Op::Refine { shape } = node.op() {
            let have = &self.g.value_type(node.inputs()[0]).shape;
            refine_check(have, shape, args[0].shape(), &shapes[0]).map_err(&fail)?;
        }
        // Constraints that involve symbols (divisibility by groups or heads, channel counts that
        // must agree) are only decidable once the symbols are bound: re-check the op on the
        // concrete operand types.
        let symbolic = node
            .inputs()
            .iter()
            .any(|&v| !self.g.value_type(v).shape.is_static());
        if symbolic && !args.is_empty() {
            let concrete: Vec<ir::TensorType> = args
                .iter()
                .map(|t| ir::TensorType::new(t.dtype(), ir::Shape::from_usizes(t.shape())))
                .collect();
            let inferred = self
                .bound_op(node.op())
                .map_err(&fail)?
                .infer(&concrete)
                .map_err(&fail)?;
            for (ty, dims) in inferred.iter().zip(&shapes) {
                if ty.shape.as_consts().is_some_and(|s| usizes(&s) != *dims) {
                    let operands: Vec<String> = concrete.iter().map(|t| t.to_string()).collect();
                    return Err(fail(format!(
                        "operands {} give a result of shape {}, but its type says {dims:?}",
                        operands.join(", "),
                        ty.shape
                    )));
                }
            }
        }
        // Empty results need no computation; skipping it also keeps kernels from forming index
        // products over the other (possibly huge) dims of empty operands.
        let empty = shapes.iter().all(|s| s.contains(&0));
        let datas = if empty && !matches!(node.op(), Op::Constant { .. }) {
            node.types()
                .iter()
                .map(|t| Data::zeros(t.dtype, 0))
                .collect()
        } else {
            self.compute(node.op(), args, &shapes).map_err(fail)?
        };
        let mut out = Vec::with_capacity(datas.len());
        for ((data, shape), ty) in datas.into_iter().zip(shapes).zip(node.types()) {
            if data.dtype() != ty.dtype {
                return Err(fail(format!(
                    "interpreter bug: produced {} for a {} result",
                    data.dtype(),
                    ty.dtype
                )));
            }
            out.push(Tensor::new(shape, data).map_err(|e| fail(format!("interpreter bug: {e}")))?);
        }
        Ok(out)
    }

    fn compute(
        &self,
        op: &Op,
        args: &[&Tensor],
        shapes: &[Vec<usize>],
    ) -> Result<Vec<Data>, String> {
        let out_shape = &shapes[0];
        let arg = |i: usize| args[i];
        let wide0 = || widen(arg(0).data());
        let moved = |index: &[usize]| Ok(vec![arg(0).data().take_all(index)]);
        let dtype0 = || arg(0).dtype();
        match op {
            Op::Param { .. } => unreachable!("params are bound before evaluation"),
            Op::Constant { value } => Ok(vec![value.tensor.data().clone()]),
            Op::Iota { axis, ty } => {
                let mut v = Vec::with_capacity(index::numel(out_shape));
                index::for_each_index(out_shape, |i| v.push(i[*axis as usize] as i128));
                Ok(vec![Data::from_i128s(ty.dtype, &v)])
            }
            Op::Dims { values } => Ok(vec![Data::I64(
                values
                    .iter()
                    .map(|d| self.eval_dim(d))
                    .collect::<Result<_, _>>()?,
            )]),
            _ if op.is_elementwise() => {
                let datas: Vec<&Data> = args.iter().map(|t| t.data()).collect();
                Ok(vec![elementwise(op, &datas, self.out_dtype(op, args))?])
            }
            Op::Bitcast { dtype } => {
                let bytes = crate::aot::encode(arg(0)).ok_or("the operand has no byte form")?;
                let t = crate::aot::decode(*dtype, arg(0).shape().to_vec(), &bytes)
                    .ok_or("the bits do not form the result dtype")?;
                Ok(vec![t.data().clone()])
            }
            Op::Reshape { .. } | Op::Refine { .. } => Ok(vec![arg(0).data().clone()]),
            Op::Transpose { perm } => moved(&index::transpose(arg(0).shape(), &usizes(perm)).1),
            Op::Broadcast { dims, .. } => {
                moved(&index::broadcast(arg(0).shape(), &usizes(dims), out_shape))
            }
            Op::Slice {
                start,
                limit,
                stride,
            } => {
                let start: Vec<i64> = start
                    .iter()
                    .map(|d| self.eval_dim(d))
                    .collect::<Result<_, _>>()?;
                let limit: Vec<i64> = limit
                    .iter()
                    .map(|d| self.eval_dim(d))
                    .collect::<Result<_, _>>()?;
                for (a, &n) in arg(0).shape().iter().enumerate() {
                    let (s, l, n) = (start[a], limit[a], n as i64);
                    let ok = if stride[a] > 0 {
                        0 <= s && s <= l && l <= n
                    } else {
                        -1 <= l && l <= s && s < n
                    };
                    if !ok {
                        return Err(format!(
                            "slice {s}..{l} by {} is out of bounds for axis {a} of size {n}",
                            stride[a]
                        ));
                    }
                }
                moved(&index::slice(arg(0).shape(), &start, stride, out_shape))
            }
            Op::Pad { low, mode, .. } => {
                let index = index::pad(arg(0).shape(), low, *mode, out_shape);
                Ok(vec![arg(0).data().take(&index, Some(arg(1).data()))])
            }
            Op::Concat { axis } => {
                let shapes: Vec<Vec<usize>> = args.iter().map(|t| t.shape().to_vec()).collect();
                let parts: Vec<&Data> = args.iter().map(|t| t.data()).collect();
                let all = Data::concat(&parts).ok_or("operands of different dtypes")?;
                Ok(vec![all.take_all(&index::concat(&shapes, *axis as usize))])
            }
            Op::Gather { axis } => moved(&compute::gather(
                arg(0).shape(),
                &widen(arg(1).data()),
                *axis as usize,
            )?),
            Op::GatherNd { batch_dims } => moved(&compute::gather_nd(
                arg(0).shape(),
                arg(1).shape(),
                &widen(arg(1).data()),
                *batch_dims as usize,
            )?),
            Op::ScatterNd { reduction } => {
                let r = compute::scatter_nd(
                    &wide0(),
                    arg(0).shape(),
                    arg(1).shape(),
                    &widen(arg(1).data()),
                    &widen(arg(2).data()),
                    *reduction,
                )?;
                Ok(vec![narrow(&r, dtype0())])
            }
            Op::ReduceSum { axes }
            | Op::ReduceProd { axes }
            | Op::ReduceMax { axes }
            | Op::ReduceMin { axes } => {
                let kind = match op {
                    Op::ReduceSum { .. } => ir::ReduceKind::Sum,
                    Op::ReduceProd { .. } => ir::ReduceKind::Prod,
                    Op::ReduceMax { .. } => ir::ReduceKind::Max,
                    _ => ir::ReduceKind::Min,
                };
                let r = compute::reduce(kind, &wide0(), arg(0).shape(), &usizes(axes), dtype0());
                Ok(vec![narrow(&r, dtype0())])
            }
            Op::ArgMax { axis, last } | Op::ArgMin { axis, last } => {
                let max = matches!(op, Op::ArgMax { .. });
                let idx = compute::arg_reduce(&wide0(), arg(0).shape(), *axis as usize, max, *last);
                Ok(vec![Data::I64(idx)])
            }
            Op::DynamicQuantize => Ok(compute::dynamic_quantize(&wide0(), arg(0).shape()).to_vec()),
            Op::TreeWalk => Ok(vec![Data::I64(compute::tree_walk(args)?)]),
            Op::Resample { axis } => Ok(vec![compute::resample(
                args,
                &widen(arg(1).data()),
                *axis as usize,
            )?]),
            Op::Lstm { reverse } => Ok(compute::lstm(args, *reverse).to_vec()),
            Op::Gru {
                reverse,
                linear_before_reset,
            } => Ok(compute::gru(args, *reverse, *linear_before_reset).to_vec()),
            Op::Rnn { reverse } => Ok(compute::rnn(args, *reverse).to_vec()),
            Op::TopK { k, axis, largest } => {
                let (src, idx) = compute::topk(
                    &wide0(),
                    arg(0).shape(),
                    *axis as usize,
                    *k as usize,
                    *largest,
                );
                Ok(vec![arg(0).data().take_all(&src), Data::I64(idx)])
            }
            Op::Dot {
                lhs_batch,
                rhs_batch,
                lhs_contract,
                rhs_contract,
            }
            | Op::Qdot {
                lhs_batch,
                rhs_batch,
                lhs_contract,
                rhs_contract,
            } => {
                let dims = DotDims {
                    lhs_batch: &usizes(lhs_batch),
                    rhs_batch: &usizes(rhs_batch),
                    lhs_contract: &usizes(lhs_contract),
                    rhs_contract: &usizes(rhs_contract),
                };
                let quantized = matches!(op, Op::Qdot { .. });
                // qdot: lhs less its zero point.
                let lhs = match quantized {
                    true => wide::less_zero(wide0(), arg(2).data().get_i128(0)),
                    false => wide0(),
                };
                let r = compute::dot(
                    &lhs,
                    arg(0).shape(),
                    &widen(arg(1).data()),
                    arg(1).shape(),
                    &dims,
                );
                match quantized {
                    true => Ok(vec![wide::i32_sums_as_f32(&r)?]),
                    false => Ok(vec![narrow(&r, dtype0())]),
                }
            }
            Op::Qdot4 { block, quantize_x } => {
                let f = |i: usize| arg(i).as_slice::<f32>().ok_or("qdot4 takes f32 operands");
                let Some(w) = arg(1).as_slice::<u8>() else {
                    return Err("qdot4's weight is not u8".into());
                };
                let k = *arg(0).shape().last().ok_or("qdot4's rows have no axis")?;
                let n = *out_shape.last().ok_or("qdot4's result has no axis")?;
                let rows: usize = out_shape[..out_shape.len() - 1].iter().product();
                let block = *block as usize;
                let quantized: Vec<f32>;
                let x = if *quantize_x && k > 0 {
                    // Each block of each row as it quantizes to int8.
                    quantized = (f(0)?.chunks(k))
                        .flat_map(|row| kernel::routines::gemm::nbits::dequantized_row(row, block))
                        .collect();
                    &quantized[..]
                } else {
                    f(0)?
                };
                let mut y = compute::qdot4(x, k, n, w, (f(2)?, f(3)?), block);
                // Rows of no elements (K = 0) sum to zero.
                y.resize(rows * n, 0.0);
                Ok(vec![Data::F32(y)])
            }
            Op::Conv {
                stride,
                dilation,
                pad_low,
                groups,
                ..
            }
            | Op::ConvBlocked {
                stride,
                dilation,
                pad_low,
                groups,
                ..
            }
            | Op::Qconv {
                stride,
                dilation,
                pad_low,
                groups,
                ..
            } => {
                let win = Window {
                    stride,
                    dilation,
                    pad_low,
                };
                let conv = match op {
                    Op::Conv { .. } | Op::Qconv { .. } => compute::conv,
                    _ => compute::conv_blocked,
                };
                let quantized = matches!(op, Op::Qconv { .. });
                // qconv: x less its zero point (padding then adds nothing).
                let lhs = match quantized {
                    true => wide::less_zero(wide0(), arg(2).data().get_i128(0)),
                    false => wide0(),
                };
                let r = conv(
                    &lhs,
                    arg(0).shape(),
                    &widen(arg(1).data()),
                    arg(1).shape(),
                    &win,
                    *groups as usize,
                    out_shape,
                );
                match quantized {
                    true => Ok(vec![wide::i32_sums_as_f32(&r)?]),
                    false => Ok(vec![narrow(&r, dtype0())]),
                }
            }
            Op::ReduceWindow {
                kind,
                window,
                stride,
                dilation,
                pad_low,
                ..
            } => {
                let win = Window {
                    stride,
                    dilation,
                    pad_low,
                };
                let r = compute::reduce_window(
                    *kind,
                    &wide0(),
                    arg(0).shape(),
                    &usizes(window),
                    &win,
                    out_shape,
                    dtype0(),
                );
                Ok(vec![narrow(&r, dtype0())])
            }
            Op::Fused { body, .. } => {
                // The region runs as a graph of its own, with the outer symbol bindings.
                let v = ir::verify(body.graph()).map_err(|e| format!("its body: {e}"))?;
                let inputs: Vec<Tensor> = args.iter().map(|&t| t.clone()).collect();
                let opts = Options {
                    bindings: self.env.clone(),
                    max_tensor_bytes: self.max_bytes,
                };
                let outs = run_with(&v, &inputs, &opts).map_err(|e| format!("in its body: {e}"))?;
                Ok(outs.iter().map(|t| t.data().clone()).collect())
            }
            Op::Loop { body, .. } => {
                let v = ir::verify(body.graph()).map_err(|e| format!("its body: {e}"))?;
                let shape = crate::looping::LoopShape::of(op, &|d| self.eval_dim(d))?;
                let opts = Options {
                    bindings: self.env.clone(),
                    max_tensor_bytes: self.max_bytes,
                };
                let g = body.graph();
                let stacked: Vec<(ir::DType, Vec<usize>)> = (g.outputs().iter())
                    .skip(shape.carry)
                    .zip(shapes.iter().skip(shape.carry))
                    .map(|((_, v), s)| (g.value_type(*v).dtype, s.clone()))
                    .collect();
                let inputs: Vec<Tensor> = args.iter().map(|&t| t.clone()).collect();
                let outs = crate::looping::run(&shape, &inputs, &stacked, &mut |step| {
                    run_with(&v, step, &opts).map_err(|e| format!("in its body: {e}"))
                })?;
                Ok(outs.into_iter().map(|t| t.data().clone()).collect())
            }
            _ => Err(format!(
                "the interpreter does not implement `{}`",
                op.mnemonic()
            )),
        }
    }

    /// The result dtype of an elementwise op (bool for comparisons and predicates).
    fn out_dtype(&self, op: &Op, args: &[&Tensor]) -> ir::DType {
        let types: Vec<_> = args.iter().map(|t| t.ty()).collect();
        op.infer(&types)
            .ok()
            .and_then(|t| t.first().map(|t| t.dtype))
            .unwrap_or(args[0].dtype())
    }
}
