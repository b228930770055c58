//! The graph: nodes holding an op, operand values and result types, wired as a DAG.
//!
//! petgraph is an implementation detail: nothing outside this file sees it. Values are
//! `(node, result index)` pairs; every operand use is also an edge from producer to consumer so
//! that users and topological order are cheap. Each node carries a creation sequence number, and
//! topological order breaks ties by it, which makes printing deterministic and stable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::ops::Op;
use crate::shape::TensorType;

/// Identifies a node of one graph.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(u32);

impl NodeId {
    fn ix(self) -> NodeIndex<u32> {
        NodeIndex::new(self.0 as usize)
    }

    fn of(ix: NodeIndex<u32>) -> NodeId {
        NodeId(ix.index() as u32)
    }
}

/// One result of one node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Value {
    pub node: NodeId,
    pub index: u32,
}

impl Value {
    pub fn new(node: NodeId, index: u32) -> Value {
        Value { node, index }
    }
}

impl From<NodeId> for Value {
    fn from(node: NodeId) -> Value {
        Value { node, index: 0 }
    }
}

/// A position in `.kir` text, 1-based.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Loc {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Where a node came from, for diagnostics: a frontend's node name and/or a text position.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Origin {
    pub name: Option<Arc<str>>,
    pub loc: Option<Loc>,
}

impl Origin {
    pub fn at(loc: Loc) -> Origin {
        Origin {
            name: None,
            loc: Some(loc),
        }
    }

    pub fn named(name: &str) -> Origin {
        Origin {
            name: Some(name.into()),
            loc: None,
        }
    }
}

/// A node: an op applied to operand values, producing one value per result type.
#[derive(Clone, Debug)]
pub struct Node {
    op: Op,
    inputs: Vec<Value>,
    types: Vec<TensorType>,
    origin: Origin,
    seq: u64,
}

impl Node {
    pub fn op(&self) -> &Op {
        &self.op
    }

    pub fn inputs(&self) -> &[Value] {
        &self.inputs
    }

    /// The declared type of each result.
    pub fn types(&self) -> &[TensorType] {
        &self.types
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// The edge weight: which operand slot of the consumer the use fills.
#[derive(Clone, Copy, Debug)]
struct Use {
    operand: u32,
}

/// Why a graph edit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("value {0:?} does not belong to this graph")]
    UnknownValue(Value),
    #[error("node {0:?} does not belong to this graph")]
    UnknownNode(NodeId),
    #[error("node {0:?} still has users")]
    HasUsers(NodeId),
}

/// The graph is not a DAG; these nodes lie on or behind a cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle(pub Vec<NodeId>);

/// A function: parameters, nodes and named outputs.
#[derive(Clone)]
pub struct Graph {
    name: String,
    dag: StableDiGraph<Node, Use, u32>,
    params: Vec<NodeId>,
    outputs: Vec<(String, Value)>,
    next_seq: u64,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            dag: StableDiGraph::default(),
            params: Vec::new(),
            outputs: Vec::new(),
            next_seq: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.dag.node_count() == 0
    }

    pub fn contains_value(&self, v: Value) -> bool {
        self.dag
            .node_weight(v.node.ix())
            .is_some_and(|n| (v.index as usize) < n.types.len())
    }

    /// Adds a node without checking its types (the verifier does that). Operands must be
    /// values of this graph. Param nodes are appended to the parameter list.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: Vec<Value>,
        types: Vec<TensorType>,
        origin: Origin,
    ) -> Result<NodeId, GraphError> {
        if let Some(&bad) = inputs.iter().find(|&&v| !self.contains_value(v)) {
            return Err(GraphError::UnknownValue(bad));
        }
        let is_param = matches!(op, Op::Param { .. });
        let seq = self.next_seq;
        self.next_seq += 1;
        let edges: Vec<(NodeId, u32)> = inputs
            .iter()
            .enumerate()
            .map(|(i, v)| (v.node, i as u32))
            .collect();
        let ix = self.dag.add_node(Node {
            op,
            inputs,
            types,
            origin,
            seq,
        });
        for (producer, operand) in edges {
            self.dag.add_edge(producer.ix(), ix, Use { operand });
        }
        let id = NodeId::of(ix);
        if is_param {
            self.params.push(id);
        }
        Ok(id)
    }

    /// The node `id`. Panics if `id` is not a node of this graph, which is a caller bug.
    pub fn node(&self, id: NodeId) -> &Node {
        self.dag
            .node_weight(id.ix())
            .unwrap_or_else(|| panic!("{id:?} is not a node of graph @{}", self.name))
    }

    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.dag.node_weight(id.ix())
    }

    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.node(v.node).types[v.index as usize]
    }

    /// All node ids, in creation order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.dag.node_indices().map(NodeId::of).collect();
        ids.sort_by_key(|&id| self.node(id).seq);
        ids
    }

    /// The parameter nodes, in declaration order.
    pub fn params(&self) -> &[NodeId] {
        &self.params
    }

    pub fn outputs(&self) -> &[(String, Value)] {
        &self.outputs
    }

    pub fn add_output(&mut self, name: &str, v: Value) -> Result<(), GraphError> {
        if !self.contains_value(v) {
            return Err(GraphError::UnknownValue(v));
        }
        self.outputs.push((name.to_string(), v));
        Ok(())
    }

    pub fn set_outputs(&mut self, outputs: Vec<(String, Value)>) -> Result<(), GraphError> {
        if let Some((_, v)) = outputs.iter().find(|(_, v)| !self.contains_value(*v)) {
            return Err(GraphError::UnknownValue(*v));
        }
        self.outputs = outputs;
        Ok(())
    }

    /// Every use of `v`: the consuming node and the operand slot.
    pub fn users(&self, v: Value) -> Vec<(NodeId, usize)> {
        let mut out: Vec<(NodeId, usize)> = self
            .dag
            .edges_directed(v.node.ix(), Direction::Outgoing)
            .filter_map(|e| {
                let consumer = NodeId::of(e.target());
                let slot = e.weight().operand as usize;
                (self.node(consumer).inputs[slot] == v).then_some((consumer, slot))
            })
            .collect();
        out.sort();
        out
    }

    /// Points operand `slot` of `node` at `v`.
    pub fn set_input(&mut self, node: NodeId, slot: usize, v: Value) -> Result<(), GraphError> {
        if !self.contains_value(v) {
            return Err(GraphError::UnknownValue(v));
        }
        let old = self
            .dag
            .node_weight(node.ix())
            .and_then(|n| n.inputs.get(slot).copied())
            .ok_or(GraphError::UnknownNode(node))?;
        let edge = self
            .dag
            .edges_connecting(old.node.ix(), node.ix())
            .find(|e| e.weight().operand as usize == slot)
            .map(|e| e.id());
        if let Some(e) = edge {
            self.dag.remove_edge(e);
        }
        self.dag.add_edge(
            v.node.ix(),
            node.ix(),
            Use {
                operand: slot as u32,
            },
        );
        if let Some(n) = self.dag.node_weight_mut(node.ix()) {
            n.inputs[slot] = v;
        }
        Ok(())
    }

    /// Makes every user of `old`, and every output naming it, use `new` instead.
    pub fn replace_all_uses(&mut self, old: Value, new: Value) -> Result<(), GraphError> {
        for (node, slot) in self.users(old) {
            self.set_input(node, slot, new)?;
        }
        for (_, v) in &mut self.outputs {
            if *v == old {
                *v = new;
            }
        }
        Ok(())
    }

    /// Removes a node that nothing uses.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node, GraphError> {
        if self
            .dag
            .edges_directed(id.ix(), Direction::Outgoing)
            .next()
            .is_some()
            || self.outputs.iter().any(|(_, v)| v.node == id)
        {
            return Err(GraphError::HasUsers(id));
        }
        let node = self
            .dag
            .remove_node(id.ix())
            .ok_or(GraphError::UnknownNode(id))?;
        self.params.retain(|&p| p != id);
        Ok(node)
    }

    /// A copy with every op replaced by `f(op)` and every type inferred again.
    pub fn map_ops<E: From<String>>(&self, f: &dyn Fn(&Op) -> Result<Op, E>) -> Result<Graph, E> {
        let order = self
            .topo_order()
            .map_err(|_| E::from("the graph has a cycle".to_string()))?;
        let mut out = Graph::new(&self.name);
        let mut map: HashMap<Value, Value> = HashMap::new();
        for id in order {
            let node = self.node(id);
            let op = f(&node.op)?;
            let inputs: Vec<Value> = node.inputs.iter().map(|v| map[v]).collect();
            let types: Vec<TensorType> =
                inputs.iter().map(|&v| out.value_type(v).clone()).collect();
            let types = op.infer(&types).map_err(E::from)?;
            let n = types.len();
            let new = out
                .add_node(op, inputs, types, node.origin.clone())
                .map_err(|e| E::from(e.to_string()))?;
            for i in 0..n {
                map.insert(Value::new(id, i as u32), Value::new(new, i as u32));
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|(name, v)| (name.clone(), map[v]))
            .collect();
        out.outputs = outputs;
        Ok(out)
    }

    /// Nodes in topological order, ties broken by creation order.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Cycle> {
        let mut indegree: HashMap<NodeIndex<u32>, usize> = self
            .dag
            .node_indices()
            .map(|ix| {
                let n = self.dag.edges_directed(ix, Direction::Incoming).count();
                (ix, n)
            })
            .collect();
        let mut ready: BinaryHeap<Reverse<(u64, u32)>> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&ix, _)| Reverse((self.dag[ix].seq, ix.index() as u32)))
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse((_, ix))) = ready.pop() {
            let ix = NodeIndex::new(ix as usize);
            order.push(NodeId::of(ix));
            for e in self.dag.edges_directed(ix, Direction::Outgoing) {
                let d = indegree
                    .get_mut(&e.target())
                    .expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    let t = e.target();
                    ready.push(Reverse((self.dag[t].seq, t.index() as u32)));
                }
            }
        }
        if order.len() < self.len() {
            let mut stuck: Vec<NodeId> = indegree
                .into_iter()
                .filter(|(_, d)| *d > 0)
                .map(|(ix, _)| NodeId::of(ix))
                .collect();
            stuck.sort_by_key(|&id| self.node(id).seq);
            return Err(Cycle(stuck));
        }
        Ok(order)
    }

    /// Printed value numbers (`%0`, `%1`, ...) in topological order; `None` for a cyclic graph.
    pub fn numbering(&self) -> Option<HashMap<Value, usize>> {
        let order = self.topo_order().ok()?;
        let mut map = HashMap::new();
        for id in order {
            for i in 0..self.node(id).types.len() {
                let n = map.len();
                map.insert(Value::new(id, i as u32), n);
            }
        }
        Some(map)
    }
}

impl PartialEq for Graph {
    /// Structural equality: the same nodes (op, operands, types) in the same topological order,
    /// the same parameters and outputs. Node ids and text positions do not matter.
    fn eq(&self, other: &Graph) -> bool {
        if self.name != other.name || self.len() != other.len() {
            return false;
        }
        let (Ok(a), Ok(b)) = (self.topo_order(), other.topo_order()) else {
            return false;
        };
        let pos_a: HashMap<NodeId, usize> = a.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let pos_b: HashMap<NodeId, usize> = b.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let same_value =
            |x: &Value, y: &Value| pos_a[&x.node] == pos_b[&y.node] && x.index == y.index;
        let nodes_match = a.iter().zip(&b).all(|(&x, &y)| {
            let (nx, ny) = (self.node(x), other.node(y));
            nx.op == ny.op
                && nx.types == ny.types
                && nx.inputs.len() == ny.inputs.len()
                && nx
                    .inputs
                    .iter()
                    .zip(&ny.inputs)
                    .all(|(p, q)| same_value(p, q))
        });
        nodes_match
            && self.params.len() == other.params.len()
            && self
                .params
                .iter()
                .zip(&other.params)
                .all(|(p, q)| pos_a[p] == pos_b[q])
            && self.outputs.len() == other.outputs.len()
            && self
                .outputs
                .iter()
                .zip(&other.outputs)
                .all(|((n1, v1), (n2, v2))| n1 == n2 && same_value(v1, v2))
    }
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::print::print_graph(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn param(g: &mut Graph, name: &str) -> Value {
        let ty = TensorType::new(DType::F32, [2]);
        let op = Op::Param {
            name: name.into(),
            ty: ty.clone(),
        };
        g.add_node(op, vec![], vec![ty], Origin::default())
            .unwrap()
            .into()
    }

    fn add(g: &mut Graph, a: Value, b: Value) -> Value {
        let ty = g.value_type(a).clone();
        g.add_node(Op::Add, vec![a, b], vec![ty], Origin::default())
            .unwrap()
            .into()
    }

    #[test]
    fn users_and_replacement() {
        let mut g = Graph::new("f");
        let x = param(&mut g, "x");
        let y = param(&mut g, "y");
        let s = add(&mut g, x, x);
        g.add_output("s", s).unwrap();
        assert_eq!(g.users(x), vec![(s.node, 0), (s.node, 1)]);
        g.replace_all_uses(x, y).unwrap();
        assert!(g.users(x).is_empty());
        assert_eq!(g.node(s.node).inputs(), &[y, y]);
        assert_eq!(
            g.remove_node(s.node).unwrap_err(),
            GraphError::HasUsers(s.node)
        );
        assert!(g.remove_node(x.node).is_ok());
        assert_eq!(g.params(), &[y.node]);
    }

    #[test]
    fn topo_order_is_by_creation_among_ready_nodes() {
        let mut g = Graph::new("f");
        let x = param(&mut g, "x");
        let y = param(&mut g, "y");
        let a = add(&mut g, y, y);
        let b = add(&mut g, x, a);
        let order = g.topo_order().unwrap();
        assert_eq!(order, vec![x.node, y.node, a.node, b.node]);
    }

    #[test]
    fn cycles_are_detected() {
        let mut g = Graph::new("f");
        let x = param(&mut g, "x");
        let a = add(&mut g, x, x);
        let b = add(&mut g, a, x);
        g.set_input(a.node, 1, b).unwrap();
        assert_eq!(g.topo_order(), Err(Cycle(vec![a.node, b.node])));
    }

    #[test]
    fn foreign_values_are_refused() {
        let mut g = Graph::new("f");
        let bogus = Value::new(NodeId(7), 0);
        let e = g.add_node(Op::Neg, vec![bogus], vec![], Origin::default());
        assert_eq!(e, Err(GraphError::UnknownValue(bogus)));
    }
}
