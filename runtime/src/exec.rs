//! Compiled execution: an [`Executable`] is a graph whose computing nodes are native kernels
//! (lowered to the kernel IR and JIT-compiled in one module) or, for the nodes codegen cannot
//! lower yet, steps on the reference interpreter. Symbols are bound from the input shapes at
//! every run; compiled kernels take their dims as arguments, so nothing is recompiled.

use std::collections::HashMap;

use codegen::jit::{Compiled, KernelFn};
use codegen::kernel::{codes, BufKind};
use codegen::Lowered;
use ir::{Data, Graph, NodeId, Op, Tensor, Value};

use crate::interp::{self, InterpError};

/// Why compiling or running failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error("the graph does not verify: {0}")]
    Verify(String),
    #[error("code generation failed: {0}")]
    Codegen(String),
    #[error("{node}: {message}")]
    Node { node: String, message: String },
}

/// How a node runs.
enum Step {
    /// A compiled kernel (function `func` of the module).
    Native { lowered: Lowered, func: usize },
    /// The reference interpreter on a graph of this node alone.
    Interp { graph: Graph, why: String },
}

/// Compile-time choices.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Run every node on the reference interpreter (no code generation).
    pub interpret_only: bool,
    /// Threads for large matrix products; `None` means all cores. The setting is
    /// process-wide for now (the last compiled executable's wins); other loops run on the
    /// calling thread.
    pub threads: Option<usize>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// The most bytes of tensors (inputs, intermediates, outputs and kernel scratch) alive at
    /// once; constants are not counted.
    pub peak_bytes: u64,
    /// The sum of the sizes of all intermediates and scratch buffers the run created.
    pub total_bytes: u64,
    /// With [`Executable::run_profiled`]: each step's label and wall time in seconds, in
    /// execution order.
    pub steps: Vec<(String, f64)>,
}

/// A compiled graph. `run(&self)` may be called from many threads at once.
pub struct Executable {
    graph: Graph,
    order: Vec<NodeId>,
    steps: HashMap<NodeId, Step>,
    compiled: Option<Compiled>,
    labels: HashMap<NodeId, String>,
    /// For each value, the position in `order` of its last reader (outputs: never freed).
    last_use: HashMap<Value, usize>,
    /// Buffers of earlier runs' intermediates, reused by later kernels of the same dtype and
    /// length (page faults of fresh large allocations otherwise dominate big models).
    pool: Pool,
}

/// Recycled buffers.
#[derive(Default)]
struct Pool(std::sync::Mutex<Vec<Data>>);

impl Pool {
    const MAX: usize = 256;

    /// A buffer of `n` elements of `dtype`; its contents are arbitrary.
    fn take(&self, dtype: ir::DType, n: usize) -> Data {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match p.iter().position(|d| d.dtype() == dtype && d.len() == n) {
            Some(i) => p.swap_remove(i),
            None => Data::zeros(dtype, n),
        }
    }

    fn give(&self, d: Data) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < Self::MAX && !d.is_empty() {
            p.push(d);
        }
    }
}

fn label(g: &Graph, id: NodeId, n: usize) -> String {
    let node = g.node(id);
    let mut s = match node.op() {
        Op::Fused { kind, .. } if !kind.is_empty() => format!("%{n} (fused kernel \"{kind}\")"),
        op => format!("%{n} ({})", op.mnemonic()),
    };
    if let Some(name) = &node.origin().name {
        s.push_str(&format!(" from node \"{name}\""));
    }
    s
}

impl Executable {
    /// Lowers and compiles every node of `g` that codegen supports.
    pub fn new(g: &Graph, opts: &CompileOptions) -> Result<Executable, ExecError> {
        let all = ir::verify(g)
            .map_err(|e| ExecError::Verify(e.to_string()))?
            .order()
            .to_vec();
        // Only what the outputs depend on runs (params always count, for input checking).
        let mut live: std::collections::HashSet<NodeId> =
            g.outputs().iter().map(|(_, v)| v.node).collect();
        for &id in all.iter().rev() {
            if live.contains(&id) {
                live.extend(g.node(id).inputs().iter().map(|v| v.node));
            }
        }
        let order: Vec<NodeId> = all
            .into_iter()
            .filter(|id| live.contains(id) || matches!(g.node(*id).op(), Op::Param { .. }))
            .collect();
        codegen::gemm::set_threads(opts.threads.unwrap_or(0));
        let numbering = g.numbering().unwrap_or_default();
        let mut steps = HashMap::new();
        let mut kernels = Vec::new();
        let mut labels = HashMap::new();
        for &id in &order {
            let node = g.node(id);
            let n = numbering.get(&Value::new(id, 0)).copied().unwrap_or(0);
            labels.insert(id, label(g, id, n));
            if matches!(node.op(), Op::Param { .. } | Op::Constant { .. }) {
                continue;
            }
            let sub = codegen::single_node_graph(g, id);
            let lowered = if opts.interpret_only {
                Err(codegen::Unsupported("interpreter selected".into()))
            } else {
                codegen::lower(&sub, &format!("k{n}"))
            };
            let step = match lowered {
                Ok(l) => {
                    kernels.push(l.kernel.clone());
                    Step::Native {
                        lowered: l,
                        func: kernels.len() - 1,
                    }
                }
                Err(e) => Step::Interp {
                    graph: sub,
                    why: e.0,
                },
            };
            steps.insert(id, step);
        }
        let compiled = if kernels.is_empty() {
            None
        } else {
            Some(codegen::jit::compile(&kernels).map_err(|e| ExecError::Codegen(e.to_string()))?)
        };
        let mut last_use = HashMap::new();
        for (i, &id) in order.iter().enumerate() {
            for &v in g.node(id).inputs() {
                last_use.insert(v, i);
            }
        }
        for (_, v) in g.outputs() {
            last_use.insert(*v, usize::MAX);
        }
        Ok(Executable {
            graph: g.clone(),
            order,
            steps,
            compiled,
            labels,
            last_use,
            pool: Pool::default(),
        })
    }

    /// The graph this executes.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Nodes that run as native kernels, and the nodes that run on the interpreter with why.
    pub fn coverage(&self) -> (usize, Vec<(String, String)>) {
        let mut native = 0;
        let mut interp = Vec::new();
        for id in &self.order {
            match self.steps.get(id) {
                Some(Step::Native { .. }) => native += 1,
                Some(Step::Interp { why, .. }) => {
                    interp.push((self.labels[id].clone(), why.clone()))
                }
                None => {}
            }
        }
        (native, interp)
    }

    /// The kernel IR of every native step, as text.
    pub fn kernels_text(&self) -> String {
        let mut out = String::new();
        for id in &self.order {
            if let Some(Step::Native { lowered, .. }) = self.steps.get(id) {
                out.push_str(&lowered.kernel.to_string());
                out.push('\n');
            }
        }
        out
    }

    /// Runs on inputs in parameter order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ExecError> {
        self.run_with(inputs, &HashMap::new())
    }

    /// Runs on inputs in parameter order; symbols not fixed by input shapes come from
    /// `bindings`.
    pub fn run_with(
        &self,
        inputs: &[Tensor],
        bindings: &HashMap<String, i64>,
    ) -> Result<Vec<Tensor>, ExecError> {
        self.run_stats(inputs, bindings).map(|(t, _)| t)
    }

    /// [`Executable::run`], also reporting memory.
    pub fn run_stats(
        &self,
        inputs: &[Tensor],
        bindings: &HashMap<String, i64>,
    ) -> Result<(Vec<Tensor>, RunStats), ExecError> {
        self.run_inner(inputs, bindings, false)
    }

    /// [`Executable::run_stats`], also timing every step (`RunStats::steps`).
    pub fn run_profiled(
        &self,
        inputs: &[Tensor],
        bindings: &HashMap<String, i64>,
    ) -> Result<(Vec<Tensor>, RunStats), ExecError> {
        self.run_inner(inputs, bindings, true)
    }

    fn run_inner(
        &self,
        inputs: &[Tensor],
        bindings: &HashMap<String, i64>,
        timed: bool,
    ) -> Result<(Vec<Tensor>, RunStats), ExecError> {
        let g = &self.graph;
        let env = interp::bind_symbols(g, inputs, bindings)?;
        let mut values: HashMap<Value, Tensor> = HashMap::new();
        let mut stats = RunStats::default();
        let mut live: u64 = inputs.iter().map(bytes).sum();
        stats.peak_bytes = live;
        for (&p, t) in g.params().iter().zip(inputs) {
            values.insert(Value::new(p, 0), t.clone());
        }
        for (pos, &id) in self.order.iter().enumerate() {
            let node = g.node(id);
            let fail = |message: String| ExecError::Node {
                node: self.labels[&id].clone(),
                message,
            };
            // Like the interpreter, empty results need no computation.
            let empty = !node.types().is_empty()
                && node.types().iter().all(|t| {
                    t.shape
                        .dims()
                        .iter()
                        .any(|d| d.eval(&|s| env.get(s).copied()) == Ok(0))
                });
            let started = timed.then(std::time::Instant::now);
            let outs = match (node.op(), self.steps.get(&id)) {
                (Op::Param { .. }, _) => continue,
                (Op::Constant { value }, _) => vec![value.tensor.clone()],
                (_, Some(_)) if empty => node
                    .types()
                    .iter()
                    .map(|t| {
                        let dims = t
                            .shape
                            .eval(&|s| env.get(s).copied())
                            .map_err(|e| fail(e.to_string()))?;
                        let dims = dims.iter().map(|&d| d.max(0) as usize).collect();
                        Ok(Tensor::zeros(t.dtype, dims))
                    })
                    .collect::<Result<_, ExecError>>()?,
                (_, Some(Step::Native { lowered, func })) => {
                    let args: Vec<&Tensor> = node.inputs().iter().map(|v| &values[v]).collect();
                    let f = self
                        .compiled
                        .as_ref()
                        .expect("native steps have a module")
                        .function(*func);
                    let (outs, scratch) =
                        run_kernel(f, lowered, &args, &env, &self.pool).map_err(fail)?;
                    stats.total_bytes += scratch + outs.iter().map(bytes).sum::<u64>();
                    stats.peak_bytes = stats
                        .peak_bytes
                        .max(live + scratch + outs.iter().map(bytes).sum::<u64>());
                    outs
                }
                (_, Some(Step::Interp { graph, .. })) => {
                    let args: Vec<Tensor> =
                        node.inputs().iter().map(|v| values[v].clone()).collect();
                    let v = ir::verify(graph).map_err(|e| fail(e.to_string()))?;
                    let opts = interp::Options {
                        bindings: env.clone(),
                        ..Default::default()
                    };
                    let outs =
                        interp::run_with(&v, &args, &opts).map_err(|e| fail(e.to_string()))?;
                    stats.total_bytes += outs.iter().map(bytes).sum::<u64>();
                    outs
                }
                (op, None) => return Err(fail(format!("no step for `{}`", op.mnemonic()))),
            };
            if let Some(t) = started {
                if !matches!(node.op(), Op::Constant { .. }) {
                    let secs = t.elapsed().as_secs_f64();
                    stats.steps.push((self.labels[&id].clone(), secs));
                }
            }
            for (i, t) in outs.into_iter().enumerate() {
                let v = Value::new(id, i as u32);
                if !matches!(node.op(), Op::Constant { .. }) {
                    live += bytes(&t);
                }
                values.insert(v, t);
            }
            stats.peak_bytes = stats.peak_bytes.max(live);
            // Free what no later node reads.
            for &v in node.inputs() {
                if self.last_use.get(&v) == Some(&pos) {
                    if let Some(t) = values.remove(&v) {
                        let producer = g.node(v.node).op();
                        if !matches!(producer, Op::Constant { .. }) {
                            live -= bytes(&t);
                        }
                        if !matches!(producer, Op::Constant { .. } | Op::Param { .. }) {
                            if let Ok(d) = t.into_data() {
                                self.pool.give(d);
                            }
                        }
                    }
                }
            }
        }
        let outs = g.outputs().iter().map(|(_, v)| values[v].clone()).collect();
        Ok((outs, stats))
    }
}

fn bytes(t: &Tensor) -> u64 {
    t.dtype().storage_bytes(t.numel() as u64).unwrap_or(0)
}

fn const_ptr(d: &Data) -> *mut u8 {
    match d {
        Data::F32(v) => v.as_ptr() as *mut u8,
        Data::F64(v) => v.as_ptr() as *mut u8,
        Data::I8(v) => v.as_ptr() as *mut u8,
        Data::I16(v) => v.as_ptr() as *mut u8,
        Data::I32(v) => v.as_ptr() as *mut u8,
        Data::I64(v) => v.as_ptr() as *mut u8,
        Data::U8(v) => v.as_ptr() as *mut u8,
        Data::U16(v) => v.as_ptr() as *mut u8,
        Data::U32(v) => v.as_ptr() as *mut u8,
        Data::U64(v) => v.as_ptr() as *mut u8,
        Data::Bool(v) => v.as_ptr() as *mut u8,
        _ => std::ptr::null_mut(),
    }
}

fn mut_ptr(d: &mut Data) -> *mut u8 {
    match d {
        Data::F32(v) => v.as_mut_ptr() as *mut u8,
        Data::F64(v) => v.as_mut_ptr() as *mut u8,
        Data::I8(v) => v.as_mut_ptr() as *mut u8,
        Data::I16(v) => v.as_mut_ptr() as *mut u8,
        Data::I32(v) => v.as_mut_ptr() as *mut u8,
        Data::I64(v) => v.as_mut_ptr() as *mut u8,
        Data::U8(v) => v.as_mut_ptr(),
        Data::U16(v) => v.as_mut_ptr() as *mut u8,
        Data::U32(v) => v.as_mut_ptr() as *mut u8,
        Data::U64(v) => v.as_mut_ptr() as *mut u8,
        Data::Bool(v) => v.as_mut_ptr() as *mut u8,
        _ => std::ptr::null_mut(),
    }
}

/// Runs one compiled kernel: returns its outputs and the bytes of scratch it used.
fn run_kernel(
    f: KernelFn,
    l: &Lowered,
    args: &[&Tensor],
    env: &HashMap<String, i64>,
    pool: &Pool,
) -> Result<(Vec<Tensor>, u64), String> {
    let k = &l.kernel;
    let dims: Vec<i64> = k
        .dims
        .iter()
        .map(|d| d.eval(&|s| env.get(s).copied()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let len = |i: usize| -> Result<usize, String> {
        let n = k.bufs[i]
            .len
            .eval(&|s| env.get(s).copied())
            .map_err(|e| e.to_string())?;
        usize::try_from(n).map_err(|_| format!("buffer {} has {n} elements", k.bufs[i].name))
    };
    // Inputs must be exactly as large as the kernel assumes: it does not check its loads.
    for (i, a) in args.iter().enumerate() {
        if a.numel() != len(i)? || a.dtype() != k.bufs[i].dtype {
            return Err(format!(
                "operand {i} is {}{:?}, the kernel expects {} elements of {}",
                a.dtype(),
                a.shape(),
                len(i)?,
                k.bufs[i].dtype
            ));
        }
    }
    let mut owned: Vec<(usize, Data)> = Vec::new();
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); k.bufs.len()];
    // Guarded loads (padding) clamp their index to 0 and read it: an empty operand gets a
    // readable zero element instead of a dangling pointer.
    static ZERO: [u64; 2] = [0; 2];
    let readable = |t: &Tensor| {
        if t.numel() == 0 {
            ZERO.as_ptr() as *mut u8
        } else {
            const_ptr(t.data())
        }
    };
    for (i, a) in args.iter().enumerate() {
        ptrs[i] = readable(a);
    }
    let mut scratch = 0;
    for (i, b) in k.bufs.iter().enumerate().skip(args.len()) {
        if let Some((_, t)) = l.consts.iter().find(|(c, _)| *c == i) {
            ptrs[i] = readable(t);
            continue;
        }
        let n = len(i)?;
        let bytes = b.dtype.storage_bytes(n as u64).unwrap_or(u64::MAX);
        if bytes > 8 << 30 {
            return Err(format!("buffer {} would take {bytes} bytes", b.name));
        }
        if b.kind == BufKind::Scratch {
            scratch += bytes;
        }
        // At least one element: guarded loads read index 0 even of an empty buffer.
        owned.push((i, pool.take(b.dtype, n.max(1))));
    }
    for (i, d) in owned.iter_mut() {
        ptrs[*i] = mut_ptr(d);
    }
    // SAFETY: every pointer addresses a live buffer of the length and dtype the kernel was
    // lowered for (checked above for operands; allocated here for the rest); the kernel
    // writes only output and scratch buffers, which nothing else references during the call.
    let code = unsafe { f(ptrs.as_ptr(), dims.as_ptr()) };
    if code != 0 {
        return Err(codes::message(code).to_string());
    }
    let node_types = k
        .bufs
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind == BufKind::Output)
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let mut outs = Vec::new();
    for i in node_types {
        let pos = owned
            .iter()
            .position(|(j, _)| *j == i)
            .expect("outputs are allocated");
        let (_, data) = owned.swap_remove(pos);
        outs.push(if len(i)? == 0 {
            Data::zeros(k.bufs[i].dtype, 0)
        } else {
            data
        });
    }
    for (_, d) in owned {
        pool.give(d);
    }
    let shapes = l.out_shapes(env)?;
    outs.into_iter()
        .zip(shapes)
        .map(|(d, s)| Tensor::new(s, d).map_err(|e| format!("kernel result: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(|o| (o, scratch))
}
