//! How each node of an executable runs (a kernel's stages, the interpreter, a loop, a
//! parameter or a constant), and how errors and profiles name it.

use super::*;

/// How a node runs.
pub(super) enum Step {
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

pub(super) struct NativeStage {
    pub(super) func: usize,
    pub(super) parallel: Option<kernel::Expr>,
    pub(super) body: Vec<kernel::Stmt>,
}

impl NativeStage {
    /// The stages of `kernel` (`kernel::stages::split`, deterministic) with their
    /// functions numbered from `first` on, and the stage kernels to compile.
    pub(super) fn split(
        kernel: &kernel::Kernel,
        first: usize,
    ) -> (Vec<NativeStage>, Vec<kernel::Kernel>) {
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

/// How errors and profiles name a step: its node, and the model nodes it came from (a fused
/// kernel's, up to three, then how many more).
pub(super) fn label(g: &Graph, id: NodeId, n: usize) -> String {
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

/// Runs a node-alone graph (an interpreter step, or a kernel's node being explained) on the
/// reference interpreter with the run's symbol bindings.
pub(super) fn interpret_node(
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
