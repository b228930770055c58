//! The pass manager: the registry of named passes, the default pipeline, and the driver that runs
//! a list of passes with optional printing, timing and verification after each.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use ir::{Graph, Op, Tensor};

use crate::egraph::{rules, Limits, Stage, Target};
use crate::rebuild::{rebuild, Settings, R};

/// Evaluates a graph without parameters (the reference interpreter, injected by the driver so
/// that this crate depends on `ir` only).
pub type Evaluator<'a> = &'a dyn Fn(&Graph) -> Result<Vec<Tensor>, String>;

/// What the passes may use and how far they may go.
#[derive(Clone)]
pub struct Options<'a> {
    /// Evaluates constant subgraphs for `fold`; without it `fold` folds only `dims`.
    pub evaluate: Option<Evaluator<'a>>,
    /// `fold` leaves results larger than this many bytes in the graph.
    pub fold_max_bytes: u64,
    /// Symbol values to specialize to (`shapes`).
    pub bindings: HashMap<String, i64>,
    /// Run the verifier after every pass (on by default in debug and test builds).
    pub verify_each: bool,
    /// How far equality saturation may go.
    pub limits: Limits,
    /// The machine the cost model prices.
    pub target: Target,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            evaluate: None,
            fold_max_bytes: 16 << 20,
            bindings: HashMap::new(),
            verify_each: cfg!(debug_assertions),
            limits: Limits::default(),
            target: Target::default(),
        }
    }
}

/// A named graph-to-graph transformation.
pub struct Pass {
    pub name: &'static str,
    pub summary: &'static str,
    run: fn(&Graph, &Options) -> R<Done>,
}

/// A pass's result: the graph and what the pass wants to report (e-graph stop reasons).
pub struct Done {
    pub graph: Graph,
    pub notes: Vec<String>,
}

impl From<Graph> for Done {
    fn from(graph: Graph) -> Done {
        Done {
            graph,
            notes: Vec::new(),
        }
    }
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pass({})", self.name)
    }
}

/// Every pass, by name.
pub static PASSES: &[Pass] = &[
    Pass {
        name: "shapes",
        summary: "specialize symbols to the given bindings and re-infer every type",
        run: |g, o| crate::shapes::run(g, o).map(Done::from),
    },
    Pass {
        name: "fold",
        summary: "evaluate nodes whose operands are all constants (size-capped)",
        run: |g, o| crate::fold::run(g, o).map(Done::from),
    },
    Pass {
        name: "canonicalize",
        summary: "identities, transpose/reshape/broadcast chains, broadcasts sunk below math, \
                  math by scalars hoisted above transposes and reshapes",
        run: |g, o| crate::canon::run(g, o).map(Done::from),
    },
    Pass {
        name: "recognize",
        summary: "e-graph: norm, softmax and activation variants toward canonical forms (x*x, rsqrt, recip, sigmoid)",
        run: |g, o| {
            let o = Options {
                target: o.target.in_kernel(),
                ..o.clone()
            };
            saturate(g, &o, &[&rules::RECOGNIZE])
        },
    },
    Pass {
        name: "quantize",
        summary: "e-graph: integer and dequantized products as 8-bit products (qdot) or exact f32 ones",
        run: |g, o| saturate(g, o, &[&rules::QUANTIZE]),
    },
    Pass {
        name: "dequantize",
        summary: "fold, dequantizing products' narrower weights to f32 once (up to 4× their bytes)",
        run: |g, o| crate::fold::dequantize(g, o).map(Done::from),
    },
    Pass {
        name: "simplify",
        summary: "e-graph: algebraic identities, scalars through dot, layout (transposes into dot)",
        run: |g, o| saturate(g, o, &[&rules::SIMPLIFY]),
    },
    Pass {
        name: "layout",
        summary: "channel-blocked images (NCHWc) for dense convs and the work between them, where the target blocks",
        run: |g, o| crate::layout::run(g, o).map(Done::from),
    },
    Pass {
        name: "tables",
        summary: "elementwise chains of one 8-bit value as lookups in a 256-entry table evaluated at compile time",
        run: |g, o| crate::tables::run(g, o).map(Done::from),
    },
    Pass {
        name: "fuse",
        summary: "fuse into kernels (elementwise chains, reductions with prologue/epilogue, dot/conv with epilogue), chosen by the cost model",
        run: crate::fuse::run,
    },
    Pass {
        name: "kernels",
        summary: "optimize each kernel body (recognize, simplify) pricing arithmetic only",
        run: crate::fuse::optimize_bodies,
    },
    Pass {
        name: "loops",
        summary: "optimize each loop body with the default pipeline",
        run: loops,
    },
    Pass {
        name: "cse",
        summary: "merge identical nodes",
        run: cse,
    },
    Pass {
        name: "dce",
        summary: "remove nodes no output depends on",
        run: dce,
    },
];

/// The default pipeline, in order.
pub static PIPELINE: &[&str] = &[
    "shapes",
    "fold",
    "canonicalize",
    "cse",
    "recognize",
    "quantize",
    "dequantize",
    "simplify",
    "layout",
    "tables",
    "fold",
    "cse",
    "fuse",
    "kernels",
    "loops",
];

/// Runs e-graph stages and extracts; notes each stage's stop reason and rule applications.
pub(crate) fn saturate(g: &Graph, opts: &Options, stages: &[&Stage]) -> R<Done> {
    let (graph, reports) = crate::egraph::optimize(g, stages, &opts.limits, &opts.target)?;
    let notes = reports
        .iter()
        .map(|r| {
            let applied: Vec<String> = r.applied.iter().map(|(k, v)| format!("{k}×{v}")).collect();
            format!(
                "{}: {} after {} iterations, {} nodes in {} classes; {}",
                r.stage,
                r.stop,
                r.iterations,
                r.nodes,
                r.classes,
                if applied.is_empty() {
                    "no rewrites".to_string()
                } else {
                    applied.join(" ")
                }
            )
        })
        .collect();
    Ok(Done { graph, notes })
}

/// Runs the default pipeline on every loop body (nested loops through this same pass).
fn loops(g: &Graph, opts: &Options) -> R<Done> {
    let mut changed = 0;
    let graph = rebuild(g, &Settings::STRICT, &mut |b, node, inputs| {
        let Op::Loop {
            count,
            carry,
            scan,
            reverse,
            body,
        } = node.op()
        else {
            return Ok(None);
        };
        // Constants every step reads move into the body, where folding and prepacking see
        // them (a recurrent weight packed once, not per step).
        let fixed = (*carry + *scan) as usize;
        let consts: HashMap<usize, Op> = (inputs.iter().enumerate().skip(fixed))
            .filter_map(|(i, v)| match b.graph().node(v.node).op() {
                op @ Op::Constant { .. } => Some((i, op.clone())),
                _ => None,
            })
            .collect();
        let mut operands = inputs.to_vec();
        let mut inner = body.graph().clone();
        if !consts.is_empty() {
            // Parameters by name (unique in a graph), in order.
            let names: Vec<String> = (inner.params().iter())
                .filter_map(|&p| match inner.node(p).op() {
                    Op::Param { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            inner = rebuild(&inner, &Settings::STRICT, &mut |bb, n, _| {
                let position = match n.op() {
                    Op::Param { name, .. } => names.iter().position(|x| x == name),
                    _ => None,
                };
                match position {
                    Some(i) if consts.contains_key(&i) => bb
                        .op(consts[&i].clone(), &[])
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    _ => Ok(None),
                }
            })?;
            operands = (inputs.iter().enumerate())
                .filter(|(i, _)| !consts.contains_key(i))
                .map(|(_, &v)| v)
                .collect();
        }
        let passes = pass_list(None).map_err(|e| e.to_string())?;
        let (new, _) = run(&inner, &passes, opts, &mut |_, _| {})
            .map_err(|e| format!("in a loop body: {e}"))?;
        if new == *body.graph() {
            return Ok(None);
        }
        changed += 1;
        let op = Op::Loop {
            count: count.clone(),
            carry: *carry,
            scan: *scan,
            reverse: *reverse,
            body: ir::Region::new(new),
        };
        b.op(op, &operands).map(Some).map_err(|e| e.to_string())
    })?;
    Ok(Done {
        graph,
        notes: vec![format!("loops: {changed} bodies optimized")],
    })
}

fn cse(g: &Graph, _: &Options) -> R<Done> {
    rebuild(g, &Settings::CSE, &mut |_, _, _| Ok(None)).map(Done::from)
}

fn dce(g: &Graph, _: &Options) -> R<Done> {
    let mut out = g.clone();
    crate::rebuild::sweep(&mut out);
    Ok(out.into())
}

/// The pass called `name`.
pub fn pass(name: &str) -> Option<&'static Pass> {
    PASSES.iter().find(|p| p.name == name)
}

/// The passes of a comma-separated list (`fold,cse`), or the default pipeline for `None`.
pub fn pass_list(names: Option<&str>) -> Result<Vec<&'static Pass>, Error> {
    let names: Vec<&str> = match names {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => PIPELINE.to_vec(),
    };
    names
        .into_iter()
        .map(|n| {
            pass(n).ok_or_else(|| Error::UnknownPass {
                name: n.to_string(),
                known: PASSES.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

/// A pass failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unknown pass `{name}` (passes: {known})")]
    UnknownPass { name: String, known: String },
    #[error("pass `{pass}`: {message}")]
    Failed { pass: String, message: String },
    #[error("pass `{pass}` produced an ill-typed graph: {message}")]
    IllTyped { pass: String, message: String },
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub pass: &'static str,
    pub time: Duration,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub notes: Vec<String>,
}

/// Runs `passes` in order on `g`. `after` sees the graph after each pass (for
/// `--print-after-all`). With `verify_each`, a pass that leaves an ill-typed graph is an error
/// naming it.
pub fn run(
    g: &Graph,
    passes: &[&'static Pass],
    opts: &Options,
    after: &mut dyn FnMut(&Pass, &Graph),
) -> Result<(Graph, Vec<PassRun>), Error> {
    let mut g = g.clone();
    let mut runs = Vec::with_capacity(passes.len());
    for p in passes {
        let start = Instant::now();
        let Done { graph: out, notes } = (p.run)(&g, opts).map_err(|message| Error::Failed {
            pass: p.name.to_string(),
            message,
        })?;
        let time = start.elapsed();
        if opts.verify_each {
            ir::verify(&out).map_err(|e| Error::IllTyped {
                pass: p.name.to_string(),
                message: e.to_string(),
            })?;
        }
        runs.push(PassRun {
            pass: p.name,
            time,
            nodes_before: g.len(),
            nodes_after: out.len(),
            notes,
        });
        after(p, &out);
        g = out;
    }
    Ok((g, runs))
}
