//! Compiled execution: an [`Executable`] is a graph whose computing nodes are native kernels
//! (lowered to the kernel IR and JIT-compiled in one module) or, for the nodes codegen cannot
//! lower yet, steps on the reference interpreter. Symbols are bound from the input shapes at
//! every run; compiled kernels take their dims as arguments, so nothing is recompiled.
//!
//! An executable's plan — its steps, their kernel IR and stage split, the slots of values,
//! the interface and its symbolic shapes — serializes ([`Executable::save`], serde with
//! postcard's stable encoding) with its constants as raw bytes beside it, and comes back
//! ([`Executable::from_saved`]) with those constants read in place: no lowering, no copies.

use std::collections::HashMap;
use std::sync::Arc;

use ir::{DType, Data, Graph, NodeId, Op, Tensor, TensorType, Value};
use kernel::loops::{BufId, BufKind};
use kernel::Code;
use kernel::Lowered;

use crate::interp::{self, InterpError};

mod run;
mod saved;

use run::MemPlan;

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
    #[error("the saved plan: {0}")]
    Plan(String),
}

/// Constant data a run reads.
#[derive(Clone)]
enum Const {
    Tensor(Tensor),
    /// A constant no step reads (every kernel taking it reads a packed copy instead): a saved
    /// plan leaves its bytes out, and only its type remains.
    Absent {
        dtype: DType,
        shape: Vec<usize>,
    },
    /// Elements in memory the executable keeps alive (an artifact's weights, used in place).
    Mapped {
        addr: usize,
        dtype: DType,
        shape: Vec<usize>,
    },
}

impl Const {
    fn dtype(&self) -> DType {
        match self {
            Const::Tensor(t) => t.dtype(),
            Const::Mapped { dtype, .. } | Const::Absent { dtype, .. } => *dtype,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Const::Tensor(t) => t.shape(),
            Const::Mapped { shape, .. } | Const::Absent { shape, .. } => shape,
        }
    }

    /// Where a kernel reads it (a readable element even when it is empty).
    fn ptr(&self) -> *mut u8 {
        match self {
            Const::Tensor(t) => tensor_ptr(t),
            Const::Mapped { shape, .. } if shape.contains(&0) => ZERO.as_ptr() as *mut u8,
            Const::Mapped { addr, .. } => *addr as *mut u8,
            // Never read (see `Const::Absent`).
            Const::Absent { .. } => ZERO.as_ptr() as *mut u8,
        }
    }

    /// The constant as a tensor (its elements copied when they are mapped).
    fn tensor(&self) -> Result<Tensor, String> {
        match self {
            Const::Tensor(t) => Ok(t.clone()),
            Const::Mapped { addr, dtype, shape } => {
                let n = shape.iter().product::<usize>() as u64;
                let len = dtype.storage_bytes(n).unwrap_or(0) as usize;
                let bytes: &[u8] = match len {
                    0 => &[],
                    // SAFETY: `from_saved` checked that the constant's bytes lie in the
                    // backing the executable keeps.
                    _ => unsafe { std::slice::from_raw_parts(*addr as *const u8, len) },
                };
                crate::aot::decode(*dtype, shape.clone(), bytes)
                    .ok_or_else(|| "a constant's bytes do not fit its type".into())
            }
            Const::Absent { .. } => Err("a constant the saved plan left out was read".into()),
        }
    }
}

/// How a node runs.
enum Step {
    /// An input of the graph.
    Param,
    Constant(Const),
    /// A compiled kernel: its stages in order, each a function of the module and, for
    /// parallel stages, the extent of the loop threads share; `consts` are what its `const`
    /// buffers hold (`lowered.consts` is left empty).
    Native {
        lowered: Lowered,
        consts: Vec<(BufId, Const)>,
        stages: Vec<NativeStage>,
        /// The node alone as a graph (compiled executables only; saved plans leave it out):
        /// when the kernel stops at a check, the interpreter runs it to say which inner node
        /// failed and on what value.
        explain: Option<Graph>,
    },
    /// The reference interpreter on a graph of this node alone.
    Interp {
        graph: Graph,
        why: String,
    },
    /// A `loop` whose body is an executable of its own, run once per step (`graph` is the
    /// node alone: saved plans keep it as an interpreter step).
    Loop {
        graph: Graph,
        body: Box<Executable>,
        /// The `loop` op (its count, carried and scanned operands, direction).
        op: Op,
    },
}

struct NativeStage {
    func: usize,
    parallel: Option<kernel::Expr>,
    body: Vec<kernel::Stmt>,
}

impl NativeStage {
    /// The stages of `kernel` (`kernel::stages::split`, deterministic) with their
    /// functions numbered from `first` on, and the stage kernels to compile.
    fn split(kernel: &kernel::Kernel, first: usize) -> (Vec<NativeStage>, Vec<kernel::Kernel>) {
        kernel::stages::split(kernel)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let stage = NativeStage {
                    func: first + i,
                    parallel: s.parallel,
                    body: s.kernel.body.clone(),
                };
                (stage, s.kernel)
            })
            .unzip()
    }
}

/// Compile-time choices.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Run every node on the reference interpreter (no code generation).
    pub interpret_only: bool,
    /// Threads for parallel loops and large matrix products; `None` means all cores. A run
    /// works on the calling thread, helped in parallel stages and large products by a pool
    /// of this many threads minus one, shared by every executable with the same count.
    pub threads: Option<usize>,
    /// The code generator that lowers and compiles nodes (`codegen::backend()`; the `kiln`
    /// crate's `compile` supplies it). The runtime itself never compiles: without one,
    /// `Executable::new` is an error unless `interpret_only` is set.
    pub backend: Option<Arc<dyn kernel::Backend>>,
    /// Inputs whose values the graph was specialized for (a `k`, axes, a branch condition
    /// read at import): runs check them, and saved plans keep them.
    pub guards: Vec<(String, Tensor)>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// The most bytes of tensors (inputs, the arena of intermediates and kernel scratch,
    /// outputs, interpreter results) held at once; constants are not counted.
    pub peak_bytes: u64,
    /// The sum of the sizes of all intermediates and scratch buffers the run created.
    pub total_bytes: u64,
    /// Bytes of the arena that the memory plan places intermediates and scratch in (the
    /// planned peak; compare with `total_bytes`).
    pub planned_bytes: u64,
    /// With [`Executable::run_profiled`]: each step's label and wall time in seconds, in
    /// execution order.
    pub steps: Vec<(String, f64)>,
}

/// Bytes an executable may keep and read in place: an artifact in memory or memory-mapped.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// What an executable knows besides its steps and code: the interface and how a run
/// numbers and frees values. Positions are those of the nodes that run, in order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Layout {
    /// The graph's name.
    name: String,
    /// Parameters and outputs with their (symbolic) types, in order.
    params: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
    /// Per position: the node's result types and its name in messages.
    types: Vec<Vec<TensorType>>,
    labels: Vec<String>,
    /// The slot of each parameter (`None`: nothing reads it).
    param_slots: Vec<Option<usize>>,
    /// Dense numbering of the values a run holds: per position, the slot of the node's first
    /// result (the others follow), the slots of its operands, and the slots no later node
    /// reads (with whether the run made the value rather than received it).
    first_slot: Vec<usize>,
    operand_slots: Vec<Vec<usize>>,
    dead_slots: Vec<Vec<(usize, bool)>>,
    /// Per slot, the position of its last reader (unread: its maker's; outputs: never).
    last_use: Vec<usize>,
    /// Slots of the graph's outputs, and how many slots there are.
    output_slots: Vec<usize>,
    n_slots: usize,
    /// Inputs whose values the graph was specialized for (see [`CompileOptions::guards`]):
    /// a run with other values is refused.
    guards: Vec<Guard>,
    /// The graph's `refine` nodes (in kernels too), checked once per binding of the symbols
    /// before anything runs.
    checks: Vec<Check>,
}

/// A `refine`: the node's label and the dims it restates (operand's, then the node's).
#[derive(serde::Serialize, serde::Deserialize)]
struct Check {
    label: String,
    have: ir::Shape,
    want: ir::Shape,
}

/// The `refine` nodes of `g` and of the kernels' bodies, labelled by `label` (inner nodes
/// also by their own origin).
fn refine_checks(g: &Graph, label: &dyn Fn(NodeId) -> String, out: &mut Vec<Check>) {
    for id in g.node_ids() {
        let node = g.node(id);
        match node.op() {
            Op::Refine { shape } => out.push(Check {
                label: label(id),
                have: g.value_type(node.inputs()[0]).shape.clone(),
                want: shape.clone(),
            }),
            Op::Fused { body, .. } => {
                let outer = label(id);
                let inner = body.graph();
                refine_checks(
                    inner,
                    &|i| match &inner.node(i).origin().name {
                        Some(n) => format!("{outer}: refine from node \"{n}\""),
                        None => outer.clone(),
                    },
                    out,
                );
            }
            _ => {}
        }
    }
}

/// An input value a graph was specialized for: parameter position and the value's bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Guard {
    param: usize,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// A compiled graph. `run(&self)` may be called from many threads at once.
pub struct Executable {
    /// The graph it was compiled from (none when loaded from a saved plan).
    graph: Option<Graph>,
    layout: Layout,
    /// How each position runs.
    steps: Vec<Step>,
    compiled: Option<Box<dyn Code>>,
    arenas: Arenas,
    /// Memory plans by symbol binding.
    plans: std::sync::Mutex<HashMap<(usize, Binding), std::sync::Arc<MemPlan>>>,
    /// Positions run in segments, each planned once the symbols it needs are bound: a
    /// segment ends at a step that defines symbols (`defines`, per position).
    segments: Vec<std::ops::Range<usize>>,
    defines: Vec<bool>,
    /// Worker threads (none when running on one thread).
    threads: Option<std::sync::Arc<kernel::threads::Pool>>,
    /// What `Const::Mapped` constants point into.
    _backing: Option<SharedBytes>,
}

/// The shared pool of `n` helper threads.
fn thread_pool(n: usize) -> Result<std::sync::Arc<kernel::threads::Pool>, ExecError> {
    use std::sync::{Mutex, OnceLock};
    type Pools = Mutex<HashMap<usize, Arc<kernel::threads::Pool>>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = kernel::threads::Pool::new(n)
        .map_err(|e| ExecError::Codegen(format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    pools.insert(n, p.clone());
    Ok(p)
}

/// The helper threads `opts` asks for.
fn threads_for(
    opts: &CompileOptions,
) -> Result<Option<std::sync::Arc<kernel::threads::Pool>>, ExecError> {
    let n_threads = match opts.threads {
        Some(0) => return Err(ExecError::Codegen("threads must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // The calling thread works too: the pool holds the other n - 1.
    if n_threads > 1 {
        Ok(Some(thread_pool(n_threads - 1)?))
    } else {
        Ok(None)
    }
}

/// Arenas of earlier runs, reused by later ones (page faults of fresh large allocations
/// otherwise dominate big models).
#[derive(Default)]
struct Arenas(std::sync::Mutex<Vec<Vec<u128>>>);

impl Arenas {
    /// An arena of at least `bytes` bytes plus alignment slack; its contents are arbitrary.
    fn take(&self, bytes: u64) -> Result<Vec<u128>, String> {
        let words = usize::try_from(bytes.div_ceil(16) + crate::plan::ALIGN / 16)
            .map_err(|_| format!("the run needs {bytes} bytes"))?;
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match p.iter().position(|a| a.len() >= words) {
            Some(i) => Ok(p.swap_remove(i)),
            None => Ok(vec![0u128; words]),
        }
    }

    fn give(&self, a: Vec<u128>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < 4 {
            p.push(a);
        }
    }
}

/// Where a value lives during a run.
enum Loc {
    /// A tensor of its own: inputs, outputs of the graph, interpreter results.
    Tensor(Tensor),
    /// A slot of one of the run's arenas, at this address.
    Arena {
        addr: usize,
        dtype: DType,
        shape: Vec<usize>,
    },
    /// A constant of the executable.
    Const(Const),
}

/// A readable zero element: where kernels read empty tensors.
static ZERO: [u64; 2] = [0; 2];

impl Loc {
    fn dtype(&self) -> DType {
        match self {
            Loc::Tensor(t) => t.dtype(),
            Loc::Arena { dtype, .. } => *dtype,
            Loc::Const(c) => c.dtype(),
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Loc::Tensor(t) => t.shape(),
            Loc::Arena { shape, .. } => shape,
            Loc::Const(c) => c.shape(),
        }
    }

    /// Where a kernel reads it (a readable element even when it is empty).
    fn ptr(&self) -> *mut u8 {
        // Guarded loads (padding) clamp their index to 0 and read it: an empty tensor gets a
        // readable zero element instead of a dangling pointer.
        match self {
            Loc::Tensor(t) => tensor_ptr(t),
            // Planned slots lie inside an arena the run holds.
            Loc::Arena { addr, .. } => *addr as *mut u8,
            Loc::Const(c) => c.ptr(),
        }
    }

    /// The value as a tensor of its own (copied out of the arena or the mapped bytes).
    fn tensor(&self) -> Result<Tensor, String> {
        match self {
            Loc::Tensor(t) => Ok(t.clone()),
            Loc::Arena { dtype, shape, .. } => {
                let n = shape.iter().product::<usize>();
                let mut d = Data::zeros(*dtype, n);
                let bytes = dtype.storage_bytes(n as u64).unwrap_or(0) as usize;
                // SAFETY: the slot holds `n` elements of the dtype; `d` as many.
                unsafe { std::ptr::copy_nonoverlapping(self.ptr(), mut_ptr(&mut d), bytes) };
                Tensor::new(shape.clone(), d).map_err(|e| e.to_string())
            }
            Loc::Const(c) => c.tensor(),
        }
    }
}

/// Values of the graph's symbols, sorted by name.
type Binding = Vec<(String, i64)>;

/// Memory plans an executable keeps (per segment and binding) before starting afresh.
const MAX_PLANS: usize = 256;

/// How errors and profiles name a step: its node, and the model nodes it came from (a fused
/// kernel's, up to three, then how many more).
fn label(g: &Graph, id: NodeId, n: usize) -> String {
    let node = g.node(id);
    let mut s = match node.op() {
        Op::Fused { kind, .. } if !kind.is_empty() => format!("%{n} (fused kernel \"{kind}\")"),
        op => format!("%{n} ({})", op.mnemonic()),
    };
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &Option<_>| {
        if let Some(name) = name {
            let name = format!("{name}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
    };
    add(&node.origin().name);
    if let Some(body) = node.op().region() {
        let body = body.graph();
        for i in body.topo_order().unwrap_or_default() {
            add(&body.node(i).origin().name);
        }
    }
    match names.as_slice() {
        [] => {}
        [one] => s.push_str(&format!(" from node \"{one}\"")),
        many => {
            let shown: Vec<String> = many.iter().take(3).map(|m| format!("\"{m}\"")).collect();
            s.push_str(&format!(" from nodes {}", shown.join(", ")));
            if many.len() > 3 {
                s.push_str(&format!(" and {} more", many.len() - 3));
            }
        }
    }
    s
}

/// Where an executable's kernel code comes from: given the kernels (in order), their code.
pub type CodeSource<'a> = &'a mut dyn FnMut(&[kernel::Kernel]) -> Result<Box<dyn Code>, ExecError>;

impl Executable {
    /// Lowers and compiles every node of `g` that the options' backend supports.
    pub fn new(g: &Graph, opts: &CompileOptions) -> Result<Executable, ExecError> {
        if opts.backend.is_none() && !opts.interpret_only {
            return Err(ExecError::Codegen(
                "no code generator: give CompileOptions::backend (kiln::compile supplies \
                 Cranelift), or set interpret_only"
                    .into(),
            ));
        }
        let backend = opts.backend.clone();
        Executable::with_code(g, opts, &mut |kernels| match &backend {
            Some(b) => b.compile(kernels).map_err(ExecError::Codegen),
            None => Err(ExecError::Codegen("no code generator".into())),
        })
    }

    /// Lowers every node of `g` that the backend supports and takes the kernels' code from `code`
    /// (called once, if there are kernels): the JIT, or an object file compiled now. Lowering
    /// is deterministic, so the same graph and kiln give the same kernels in the same order.
    pub fn with_code(
        g: &Graph,
        opts: &CompileOptions,
        code: CodeSource<'_>,
    ) -> Result<Executable, ExecError> {
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
        let threads = threads_for(opts)?;
        let numbering = g.numbering().unwrap_or_default();
        let mut packs = kernel::PackCache::default();
        let mut steps = Vec::with_capacity(order.len());
        let mut kernels = Vec::new();
        let mut labels = Vec::with_capacity(order.len());
        for &id in &order {
            let node = g.node(id);
            let n = numbering.get(&Value::new(id, 0)).copied().unwrap_or(0);
            labels.push(label(g, id, n));
            match node.op() {
                Op::Param { .. } => {
                    steps.push(Step::Param);
                    continue;
                }
                Op::Constant { value } => {
                    steps.push(Step::Constant(Const::Tensor(value.tensor.clone())));
                    continue;
                }
                _ => {}
            }
            let sub = kernel::single_node_graph(g, id);
            if let (Op::Loop { body, .. }, false) = (node.op(), opts.interpret_only) {
                let inner = CompileOptions {
                    guards: Vec::new(),
                    ..opts.clone()
                };
                let body = Executable::new(body.graph(), &inner).map_err(|e| ExecError::Node {
                    node: labels.last().cloned().unwrap_or_default(),
                    message: format!("its body: {e}"),
                })?;
                steps.push(Step::Loop {
                    graph: sub,
                    body: Box::new(body),
                    op: node.op().clone(),
                });
                continue;
            }
            let lowered = if opts.interpret_only {
                Err(kernel::Unsupported("interpreter selected".into()))
            } else {
                match &opts.backend {
                    Some(b) => b.lower(&sub, &format!("k{n}")),
                    None => Err(kernel::Unsupported("no code generator".into())),
                }
            };
            let step = match lowered {
                Ok(mut l) => {
                    let operands: Vec<Option<&Tensor>> = node
                        .inputs()
                        .iter()
                        .map(|v| match g.node(v.node).op() {
                            Op::Constant { value } => Some(&value.tensor),
                            _ => None,
                        })
                        .collect();
                    kernel::prepack(&mut l, &operands, &mut packs);
                    let (stages, ks) = NativeStage::split(&l.kernel, kernels.len());
                    kernels.extend(ks);
                    // The step holds the constants; `lowered` keeps kernel and shapes only, as
                    // a loaded step does.
                    let consts = std::mem::take(&mut l.consts)
                        .into_iter()
                        .map(|(b, t)| (b, Const::Tensor(t)))
                        .collect();
                    Step::Native {
                        lowered: l,
                        consts,
                        stages,
                        explain: Some(sub),
                    }
                }
                Err(e) => Step::Interp {
                    graph: sub,
                    why: e.0,
                },
            };
            steps.push(step);
        }
        let compiled: Option<Box<dyn Code>> = if kernels.is_empty() {
            None
        } else {
            let c = code(&kernels)?;
            if c.len() != kernels.len() {
                return Err(ExecError::Codegen(format!(
                    "code for {} kernels, the graph has {}",
                    c.len(),
                    kernels.len()
                )));
            }
            Some(c)
        };
        let mut layout = Layout::of(g, &order, labels);
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(p, &id)| (id, p)).collect();
        let mut checks = Vec::new();
        refine_checks(
            g,
            &|id| {
                position
                    .get(&id)
                    .map_or_else(String::new, |&p| layout.labels[p].clone())
            },
            &mut checks,
        );
        // Dead nodes (no position) check nothing.
        checks.retain(|c| !c.label.is_empty());
        layout.checks = checks;
        for (name, t) in &opts.guards {
            let param = layout
                .params
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| ExecError::Plan(format!("a guard names `{name}`, not an input")))?;
            let bytes = crate::aot::encode(t)
                .ok_or_else(|| ExecError::Plan(format!("the guard on `{name}` has no bytes")))?;
            layout.guards.push(Guard {
                param,
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                bytes,
            });
        }
        let (segments, defines) = layout.segments();
        Ok(Executable {
            graph: Some(g.clone()),
            layout,
            steps,
            compiled,
            arenas: Arenas::default(),
            plans: Default::default(),
            segments,
            defines,
            threads,
            _backing: None,
        })
    }

    /// The graph this executes, when it was compiled from one (not loaded from a plan).
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    /// The parameters (inputs), in order, with their types (symbolic dims bind at runs).
    pub fn params(&self) -> &[(String, TensorType)] {
        &self.layout.params
    }

    /// The outputs, in order, with their types.
    pub fn outputs(&self) -> &[(String, TensorType)] {
        &self.layout.outputs
    }

    /// Nodes that run as native kernels, and the nodes that run on the interpreter with why.
    pub fn coverage(&self) -> (usize, Vec<(String, String)>) {
        let mut native = 0;
        let mut interp = Vec::new();
        for (step, label) in self.steps.iter().zip(&self.layout.labels) {
            match step {
                Step::Native { .. } => native += 1,
                Step::Interp { why, .. } => interp.push((label.clone(), why.clone())),
                Step::Loop { body, .. } => {
                    let (n, inner) = body.coverage();
                    native += n;
                    interp.extend(
                        inner
                            .into_iter()
                            .map(|(l, why)| (format!("{label}: in its body: {l}"), why)),
                    );
                }
                _ => {}
            }
        }
        (native, interp)
    }

    /// The kernel IR of every native step, as text.
    pub fn kernels_text(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            match step {
                Step::Native { lowered, .. } => {
                    out.push_str(&lowered.kernel.to_string());
                    out.push('\n');
                }
                Step::Loop { body, .. } => out.push_str(&body.kernels_text()),
                _ => {}
            }
        }
        out
    }

    /// Runs on inputs in parameter order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ExecError> {
        self.run_with(inputs, &HashMap::new())
    }

    /// The inputs whose values this executable was specialized for, with those values.
    pub fn guards(&self) -> Vec<(String, Tensor)> {
        self.layout
            .guards
            .iter()
            .filter_map(|g| {
                let t = crate::aot::decode(g.dtype, g.shape.clone(), &g.bytes)?;
                Some((self.layout.params.get(g.param)?.0.clone(), t))
            })
            .collect()
    }

    /// Refuses inputs that differ from the values the graph was specialized for.
    fn check_guards(&self, inputs: &[Tensor]) -> Result<(), ExecError> {
        for g in &self.layout.guards {
            let (name, _) = &self.layout.params[g.param];
            let same = inputs.get(g.param).is_some_and(|t| {
                t.dtype() == g.dtype
                    && t.shape() == g.shape.as_slice()
                    && crate::aot::encode(t).is_some_and(|b| b == g.bytes)
            });
            if !same {
                let want = crate::aot::decode(g.dtype, g.shape.clone(), &g.bytes)
                    .map_or_else(|| "?".into(), |t| format!("{:?}", t.to_f64_vec()));
                return Err(ExecError::Interp(InterpError::Input {
                    name: name.clone(),
                    message: format!(
                        "the model was compiled for the value {want} of this input (it sets a \
                         shape, axes, a count or a branch); compile again for other values"
                    ),
                }));
            }
        }
        Ok(())
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
        // The run stays on the calling thread; helpers join parallel stages and products.
        kernel::threads::with_helpers(self.threads.clone(), || {
            self.run_here(inputs, bindings, timed)
        })
    }
}

/// Runs a node-alone graph (an interpreter step, or a kernel's node being explained) on the
/// reference interpreter with the run's symbol bindings.
fn interpret_node(
    g: &Graph,
    args: &[Tensor],
    env: &HashMap<String, i64>,
) -> Result<Vec<Tensor>, String> {
    let v = ir::verify(g).map_err(|e| e.to_string())?;
    let opts = interp::Options {
        bindings: env.clone(),
        ..Default::default()
    };
    interp::run_with(&v, args, &opts).map_err(|e| e.to_string())
}

impl Layout {
    /// The run's segments and which positions define symbols: a position whose result types
    /// name a symbol neither the parameters nor an earlier position have (a data-dependent
    /// size) ends a segment.
    fn segments(&self) -> (Vec<std::ops::Range<usize>>, Vec<bool>) {
        let mut known: std::collections::HashSet<std::sync::Arc<str>> = self
            .params
            .iter()
            .flat_map(|(_, t)| t.shape.dims().iter().flat_map(|d| d.symbols()))
            .collect();
        let n = self.types.len();
        let mut defines = vec![false; n];
        let mut segments = Vec::new();
        let mut start = 0;
        for (pos, types) in self.types.iter().enumerate() {
            for s in types
                .iter()
                .flat_map(|t| t.shape.dims().iter().flat_map(|d| d.symbols()))
            {
                if known.insert(s) {
                    defines[pos] = true;
                }
            }
            if defines[pos] {
                segments.push(start..pos + 1);
                start = pos + 1;
            }
        }
        if start < n || segments.is_empty() {
            segments.push(start..n);
        }
        (segments, defines)
    }

    /// The layout of running `order` (positions) of `g`.
    fn of(g: &Graph, order: &[NodeId], labels: Vec<String>) -> Layout {
        let mut slot: HashMap<Value, usize> = HashMap::new();
        let mut first_slot = Vec::with_capacity(order.len());
        let mut last_use = Vec::new();
        for (pos, &id) in order.iter().enumerate() {
            first_slot.push(slot.len());
            for i in 0..g.node(id).types().len() {
                let n = slot.len();
                slot.insert(Value::new(id, i as u32), n);
                last_use.push(pos);
            }
        }
        let mut reads: HashMap<Value, usize> = HashMap::new();
        for (pos, &id) in order.iter().enumerate() {
            for &v in g.node(id).inputs() {
                last_use[slot[&v]] = pos;
                reads.insert(v, pos);
            }
        }
        for (_, v) in g.outputs() {
            last_use[slot[v]] = usize::MAX;
            reads.insert(*v, usize::MAX);
        }
        let operand_slots = order
            .iter()
            .map(|&id| g.node(id).inputs().iter().map(|v| slot[v]).collect())
            .collect();
        let dead_slots = order
            .iter()
            .enumerate()
            .map(|(pos, &id)| {
                let mut dead: Vec<(usize, bool)> = g
                    .node(id)
                    .inputs()
                    .iter()
                    .filter(|v| reads.get(v) == Some(&pos))
                    .map(|v| {
                        let made = g.node(v.node).op();
                        (
                            slot[v],
                            !matches!(made, Op::Constant { .. } | Op::Param { .. }),
                        )
                    })
                    .collect();
                dead.sort_unstable();
                dead.dedup();
                dead
            })
            .collect();
        let param_slots = g
            .params()
            .iter()
            .map(|&p| slot.get(&Value::new(p, 0)).copied())
            .collect();
        let params = g
            .params()
            .iter()
            .filter_map(|&p| match g.node(p).op() {
                Op::Param { name, ty } => Some((name.clone(), ty.clone())),
                _ => None,
            })
            .collect();
        Layout {
            name: g.name().to_string(),
            params,
            outputs: g
                .outputs()
                .iter()
                .map(|(n, v)| (n.clone(), g.value_type(*v).clone()))
                .collect(),
            types: order
                .iter()
                .map(|&id| g.node(id).types().to_vec())
                .collect(),
            labels,
            param_slots,
            first_slot,
            operand_slots,
            dead_slots,
            last_use,
            output_slots: g.outputs().iter().map(|(_, v)| slot[v]).collect(),
            n_slots: slot.len(),
            guards: Vec::new(),
            checks: Vec::new(),
        }
    }
}

/// The value in slot `i` of a run.
fn loc(values: &[Option<Loc>], i: usize) -> Result<&Loc, ExecError> {
    values[i].as_ref().ok_or_else(|| ExecError::Node {
        node: "a run".into(),
        message: "a value was read before it was computed".into(),
    })
}

fn bytes(t: &Tensor) -> u64 {
    t.dtype().storage_bytes(t.numel() as u64).unwrap_or(0)
}

/// Where a kernel reads a tensor: its data, or a readable zero element when it is empty.
fn tensor_ptr(t: &Tensor) -> *mut u8 {
    if t.numel() == 0 {
        ZERO.as_ptr() as *mut u8
    } else {
        const_ptr(t.data())
    }
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
