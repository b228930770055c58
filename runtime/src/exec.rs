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
use kernel::plan::{refine_checks, Guard, Layout};
use kernel::Code;
use kernel::Lowered;

use crate::interp::{self, InterpError};

mod inplace;
mod memory;
mod run;
mod saved;
mod steps;

use inplace::InPlace;
use memory::*;
use run::MemPlan;
use steps::*;

/// Why compiling or running failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error("the graph does not verify: {0}")]
    Verify(String),
    #[error("code generation failed: {0}")]
    Codegen(String),
    #[error(transparent)]
    Backend(#[from] kernel::Error),
    #[error("{node}: {message}")]
    Node { node: String, message: String },
    #[error("the saved plan: {0}")]
    Plan(String),
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
    /// Positions that run without helpers: results many later positions read
    /// (`Layout::many_readers`).
    alone: Vec<bool>,
    /// Worker threads (none when running on one thread).
    threads: Option<std::sync::Arc<kernel::threads::Pool>>,
    /// What `Const::Mapped` constants point into.
    _backing: Option<SharedBytes>,
}

/// Readers from which a result is computed without helpers (`Layout::many_readers`): a
/// recurrence's steps (an LSTM of 16 steps, each reading its projection), not a residual
/// stream or a mask a few layers read.
const MANY_READERS: usize = 8;

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

/// Values of the graph's symbols, sorted by name.
type Binding = Vec<(String, i64)>;

/// Memory plans an executable keeps (per segment and binding) before starting afresh.
const MAX_PLANS: usize = 256;

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
            Some(b) => Ok(b.compile(kernels)?),
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
        // Kernel constants in cache lines, one copy per tensor however many kernels read it
        // (the tensors held until every step is made, so that no address is reused).
        let mut lines = memory::LineCache::default();
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
                        .map(|(b, t)| (b, lines.of(t)))
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
        let alone = layout.many_readers(MANY_READERS);
        Ok(Executable {
            graph: Some(g.clone()),
            layout,
            steps,
            compiled,
            arenas: Arenas::default(),
            plans: Default::default(),
            segments,
            defines,
            alone,
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
