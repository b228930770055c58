//! The saved plan: what compiling a graph leaves for running it without a compiler — the
//! memory layout of a run (slots, liveness, the interface), one step per node (a kernel with
//! its constants' places in the weights, an interpreted node as text, a parameter or a
//! constant) and how many kernel functions the code has. Artifacts store it (postcard); the
//! runtime builds it when it compiles and checks it when it loads one.

use std::collections::HashMap;

use ir::{DType, Graph, NodeId, Op, TensorType, Value};

use crate::loops::{BufId, Kernel};

/// Where a saved constant's bytes are in the weights saved beside the plan.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct WeightRef {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub bytes: u64,
}

/// A step as saved.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Step {
    Param,
    Constant(WeightRef),
    /// A constant nothing reads (see `Const::Absent`).
    Absent {
        dtype: DType,
        shape: Vec<u64>,
    },
    /// Its stages are split again at loading (deterministic: the same kiln split them).
    Native {
        kernel: Kernel,
        outputs: Vec<ir::Shape>,
        consts: Vec<(BufId, WeightRef)>,
        /// Constant buffers remade on loading from the others (`crate::derive`): packed
        /// copies larger than their source, which the weights leave out.
        derived: Vec<BufId>,
    },
    /// The node's graph as `.kir` text (constants inline).
    Interp {
        graph: String,
        why: String,
    },
}

/// A plan as saved (see the module docs).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Plan<L = Layout> {
    /// `&Layout` when saving (it serializes the same).
    pub layout: L,
    pub steps: Vec<Step>,
    /// How many kernel functions the code must have.
    pub kernels: usize,
}

/// What an executable knows besides its steps and code: the interface and how a run
/// numbers and frees values. Positions are those of the nodes that run, in order.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// The graph's name.
    pub name: String,
    /// Parameters and outputs with their (symbolic) types, in order.
    pub params: Vec<(String, TensorType)>,
    pub outputs: Vec<(String, TensorType)>,
    /// Per position: the node's result types and its name in messages.
    pub types: Vec<Vec<TensorType>>,
    pub labels: Vec<String>,
    /// The slot of each parameter (`None`: nothing reads it).
    pub param_slots: Vec<Option<usize>>,
    /// Dense numbering of the values a run holds: per position, the slot of the node's first
    /// result (the others follow), the slots of its operands, and the slots no later node
    /// reads (with whether the run made the value rather than received it).
    pub first_slot: Vec<usize>,
    pub operand_slots: Vec<Vec<usize>>,
    pub dead_slots: Vec<Vec<(usize, bool)>>,
    /// Per slot, the position of its last reader (unread: its maker's; outputs: never).
    pub last_use: Vec<usize>,
    /// Slots of the graph's outputs, and how many slots there are.
    pub output_slots: Vec<usize>,
    pub n_slots: usize,
    /// Inputs whose values the graph was specialized for (see the runtime's `CompileOptions::guards`):
    /// a run with other values is refused.
    pub guards: Vec<Guard>,
    /// The graph's `refine` nodes (in kernels too), checked once per binding of the symbols
    /// before anything runs.
    pub checks: Vec<Check>,
    /// Per position, the axis of a `concat` node (a run may place its operands in its result
    /// and skip it: see the runtime's memory plan).
    pub concat_axes: Vec<Option<usize>>,
}

/// A `refine`: the node's label and the dims it restates (operand's, then the node's).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub label: String,
    pub have: ir::Shape,
    pub want: ir::Shape,
}

/// The `refine` nodes of `g` and of the kernels' bodies, labelled by `label` (inner nodes
/// also by their own origin).
pub fn refine_checks(g: &Graph, label: &dyn Fn(NodeId) -> String, out: &mut Vec<Check>) {
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
pub struct Guard {
    pub param: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Layout {
    /// Which positions have a result that at least `readers` later positions read: a
    /// recurrence's projection, read one step at a time (an LSTM's steps each read a row
    /// block of it). The runtime computes those without helpers, so that the whole result is
    /// in the cache of the core whose steps read it (a helper's half made every step fetch
    /// rows from the other core: the LSTM took longer at 2 threads than at 1).
    pub fn many_readers(&self, readers: usize) -> Vec<bool> {
        let mut count = vec![0usize; self.n_slots];
        for ops in &self.operand_slots {
            let mut seen: Vec<usize> = ops.clone();
            seen.sort_unstable();
            seen.dedup();
            for s in seen {
                if let Some(c) = count.get_mut(s) {
                    *c += 1;
                }
            }
        }
        (0..self.types.len())
            .map(|pos| {
                (0..self.types[pos].len()).any(|i| {
                    count
                        .get(self.first_slot[pos] + i)
                        .is_some_and(|&c| c >= readers)
                })
            })
            .collect()
    }

    /// The run's segments and which positions define symbols: a position whose result types
    /// name a symbol neither the parameters nor an earlier position have (a data-dependent
    /// size) ends a segment.
    pub fn segments(&self) -> (Vec<std::ops::Range<usize>>, Vec<bool>) {
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
    pub fn of(g: &Graph, order: &[NodeId], labels: Vec<String>) -> Layout {
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
            concat_axes: order
                .iter()
                .map(|&id| match g.node(id).op() {
                    // Nonnegative in a graph that infers.
                    Op::Concat { axis } => usize::try_from(*axis).ok(),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Checks that a deserialized layout indexes only what it has, for `steps`.
    pub fn check(&self, steps: &[Step]) -> Result<(), String> {
        let n = steps.len();
        let slots = self.n_slots;
        let ok = [
            self.types.len(),
            self.labels.len(),
            self.first_slot.len(),
            self.operand_slots.len(),
            self.dead_slots.len(),
            self.concat_axes.len(),
        ]
        .iter()
        .all(|&l| l == n)
            && self.param_slots.len() == self.params.len()
            && self.output_slots.len() == self.outputs.len()
            && self.last_use.len() == slots
            && self.param_slots.iter().flatten().all(|&s| s < slots)
            && self.output_slots.iter().all(|&s| s < slots)
            && self.operand_slots.iter().flatten().all(|&s| s < slots)
            && self.dead_slots.iter().flatten().all(|&(s, _)| s < slots)
            && self.guards.iter().all(|g| g.param < self.params.len())
            && self.checks.iter().all(|c| c.have.rank() == c.want.rank())
            && (0..n).all(|p| {
                self.concat_axes[p]
                    .is_none_or(|a| self.types[p].len() == 1 && a < self.types[p][0].shape.rank())
            })
            && (0..n).all(|p| {
                self.first_slot[p]
                    .checked_add(self.types[p].len())
                    .is_some_and(|end| end <= slots)
            })
            && steps.iter().enumerate().all(|(p, s)| match s {
                Step::Param | Step::Constant(_) | Step::Absent { .. } => {
                    self.types[p].len() == 1 && self.operand_slots[p].is_empty()
                }
                _ => true,
            });
        match ok {
            true => Ok(()),
            false => Err("its slots do not fit its steps".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recurrence's projection (read by every step) runs without helpers; a value a few
    /// nodes read, or one read several times by one node, does not.
    #[test]
    fn results_many_positions_read_are_marked() {
        let mut text = String::from(
            "func @f {\n  %x = param {name=\"x\"} : f32[4]\n  %p = exp %x : f32[4]\n  %q = neg %x : f32[4]\n  %r = mul %q, %q : f32[4]\n  %s0 = add %q, %x : f32[4]\n",
        );
        for i in 1..9 {
            text += &format!("  %s{i} = add %s{}, %p : f32[4]\n", i - 1);
        }
        text += "  return %s8, %r\n}\n";
        let g = ir::parse_graph(&text).expect("parses");
        let order = g.topo_order().expect("acyclic");
        let labels = order.iter().map(|id| format!("{id:?}")).collect();
        let layout = Layout::of(&g, &order, labels);
        let marked = layout.many_readers(8);
        let name = |pos: usize| g.node(order[pos]).op().mnemonic().to_string();
        let flagged: Vec<String> = (0..order.len()).filter(|&p| marked[p]).map(name).collect();
        // `exp` feeds the 8 steps; `neg` two positions (`mul`, reading it twice, and `add`).
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert!(flagged[0].starts_with("exp"), "{flagged:?}");
        assert_eq!(layout.many_readers(9).iter().filter(|&&m| m).count(), 0);
    }
}
