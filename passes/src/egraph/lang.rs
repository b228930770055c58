//! The e-graph language and its analysis. The language is the IR's op table itself: an e-node is
//! an interned [`Op`] (attributes and constant tensors included, so two nodes are equal exactly
//! when their ops and operands are) over child e-classes, plus `proj` to pick one result of a
//! multi-result op. Tensor data stays out of the hashcons: constants are interned once and
//! e-nodes carry a small id.
//!
//! The analysis gives every e-class its types (by the verifier's own `Op::infer`, one
//! implementation of typing), whether it depends only on constants, the value of all of its
//! elements when they are known to be equal (a splat), whether it is known positive, and for
//! integers the interval its elements lie in (what lets a product of quantized values run
//! exactly in f32).

use std::collections::HashMap;

use egg::{DidMerge, Id, Language};
use ir::{Op, Shape, TensorType};

/// An operator of the e-graph language.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum EOp {
    Ir(Op),
    /// Result `i` of a multi-result operand.
    Proj(u32),
}

/// Index of an interned [`EOp`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OpId(pub u32);

/// An e-node: an interned operator over e-classes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ENode {
    pub op: OpId,
    pub children: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = OpId;

    fn discriminant(&self) -> OpId {
        self.op
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

/// What is known of an e-class.
#[derive(Clone, Debug)]
pub struct Info {
    /// One type for a value; one per result for a multi-result class.
    pub types: Vec<TensorType>,
    /// The value depends on constants only (it will fold).
    pub constant: bool,
    /// Every element equals this value.
    pub splat: Option<f64>,
    /// Every element is known to be > 0.
    pub positive: bool,
    /// Integers: every element lies in `lo..=hi`.
    pub range: Option<(f64, f64)>,
}

impl Info {
    pub fn ty(&self) -> &TensorType {
        &self.types[0]
    }

    /// The facts beyond the types, comparable (NaN splats included).
    fn facts(&self) -> (bool, Option<u64>, bool, Option<(u64, u64)>) {
        (
            self.constant,
            self.splat.map(f64::to_bits),
            self.positive,
            self.range.map(|(lo, hi)| (lo.to_bits(), hi.to_bits())),
        )
    }
}

/// The analysis: the operator interner and the type rules.
#[derive(Default)]
pub struct Analysis {
    pub ops: Vec<EOp>,
    ids: HashMap<EOp, OpId>,
    /// Classes found to have two different types: a bug in a rule, reported by the runner.
    pub conflicts: Vec<String>,
}

impl Analysis {
    pub fn intern(&mut self, op: EOp) -> OpId {
        if let Some(&id) = self.ids.get(&op) {
            return id;
        }
        let id = OpId(self.ops.len() as u32);
        self.ops.push(op.clone());
        self.ids.insert(op, id);
        id
    }

    pub fn op(&self, id: OpId) -> &EOp {
        &self.ops[id.0 as usize]
    }
}

pub type EGraph = egg::EGraph<ENode, Analysis>;

/// The types of `op` over operands of the given types; the runner checks this before adding a
/// node, so `make` only meets well-typed nodes.
pub fn infer(op: &EOp, operands: &[&Info]) -> Result<Vec<TensorType>, String> {
    match op {
        EOp::Ir(op) => {
            let tys: Vec<TensorType> = operands
                .iter()
                .map(|i| match i.types.as_slice() {
                    [t] => Ok(t.clone()),
                    _ => Err("a multi-result value used without `proj`".to_string()),
                })
                .collect::<Result<_, _>>()?;
            op.infer(&tys)
        }
        EOp::Proj(i) => match operands {
            [x] => x
                .types
                .get(*i as usize)
                .cloned()
                .map(|t| vec![t])
                .ok_or_else(|| format!("proj {i} of a value with {} results", x.types.len())),
            _ => Err("proj takes one operand".into()),
        },
    }
}

fn splat_of(op: &Op, operands: &[&Info]) -> Option<f64> {
    match op {
        Op::Constant { value } => {
            let t = &value.tensor;
            let d = t.data();
            if !d.is_splat() {
                return None;
            }
            // Only values that survive the trip through f64 (not every i64 does).
            let v = d.get_f64(0);
            (ir::Data::from_f64s(t.dtype(), &[v]).bits(0) == d.bits(0)).then_some(v)
        }
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Refine { .. } | Op::Transpose { .. } => {
            operands[0].splat
        }
        _ => None,
    }
}

fn positive_of(op: &Op, operands: &[&Info], splat: Option<f64>) -> bool {
    if splat.is_some_and(|v| v > 0.0) {
        return true;
    }
    let all = || operands.iter().all(|i| i.positive);
    match op {
        Op::Exp | Op::Sigmoid => true,
        Op::Sqrt | Op::Rsqrt | Op::Recip => all(),
        Op::Add | Op::Mul | Op::Div | Op::Max | Op::Min => all(),
        Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Refine { .. }
        | Op::Transpose { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::ReduceMin { .. }
        | Op::ReduceProd { .. } => all(),
        _ => false,
    }
}

/// Constants up to this many elements have their interval computed (one pass over the data
/// when the class is made).
const RANGE_SCAN: usize = 1 << 24;

/// The interval of an integer-typed node's elements, from its operands' intervals; `None`
/// when unknown or when the arithmetic could leave the type's range (it would wrap).
fn range_of(op: &Op, operands: &[&Info], ty: &TensorType) -> Option<(f64, f64)> {
    let limits = ty.dtype.int_range()?;
    let arg = |i: usize| operands.get(i).and_then(|a| a.range);
    let r = match op {
        Op::Constant { value } => {
            let d = value.tensor.data();
            if d.len() > RANGE_SCAN || !value.tensor.dtype().is_int() {
                return Some(limits);
            }
            (0..d.len()).fold(None, |acc: Option<(f64, f64)>, i| {
                let v = d.get_f64(i);
                Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
            })?
        }
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Refine { .. } | Op::Transpose { .. } => {
            arg(0)?
        }
        // A conversion keeps the values that fit; anything else lands somewhere in the type.
        Op::Cast { .. } => match arg(0) {
            Some((lo, hi)) if lo >= limits.0 && hi <= limits.1 => (lo, hi),
            _ => limits,
        },
        Op::Add => {
            let ((a, b), (c, d)) = (arg(0)?, arg(1)?);
            (a + c, b + d)
        }
        Op::Sub => {
            let ((a, b), (c, d)) = (arg(0)?, arg(1)?);
            (a - d, b - c)
        }
        Op::Neg => {
            let (a, b) = arg(0)?;
            (-b, -a)
        }
        Op::Mul => {
            let ((a, b), (c, d)) = (arg(0)?, arg(1)?);
            let p = [a * c, a * d, b * c, b * d];
            (
                p.iter().copied().fold(f64::INFINITY, f64::min),
                p.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        }
        Op::Max => {
            let ((a, b), (c, d)) = (arg(0)?, arg(1)?);
            (a.max(c), b.max(d))
        }
        Op::Min => {
            let ((a, b), (c, d)) = (arg(0)?, arg(1)?);
            (a.min(c), b.min(d))
        }
        _ => return Some(limits),
    };
    // Beyond the type's range the result wraps: only the type's own interval is known.
    if r.0 < limits.0 || r.1 > limits.1 {
        return Some(limits);
    }
    Some(r)
}

impl egg::Analysis<ENode> for Analysis {
    type Data = Info;

    fn make(egraph: &mut EGraph, enode: &ENode, _: Id) -> Info {
        let operands: Vec<&Info> = enode.children.iter().map(|&c| &egraph[c].data).collect();
        let op = egraph.analysis.op(enode.op);
        let types = infer(op, &operands).unwrap_or_else(|e| {
            // Unreachable: nodes are checked before they are added.
            debug_assert!(false, "ill-typed e-node {op:?}: {e}");
            vec![TensorType::new(ir::DType::F32, Shape::scalar())]
        });
        let (constant, splat, positive, range) = match op {
            EOp::Ir(op) => {
                let constant = match op {
                    Op::Param { .. } => false,
                    Op::Constant { .. } | Op::Iota { .. } => true,
                    Op::Dims { values } => values.iter().all(|d| d.as_const().is_some()),
                    _ => operands.iter().all(|i| i.constant),
                };
                let splat = splat_of(op, &operands);
                let range = match types.as_slice() {
                    [t] => range_of(op, &operands, t),
                    _ => None,
                };
                (constant, splat, positive_of(op, &operands, splat), range)
            }
            // A result of an integer type lies in its range, as a parameter's does.
            EOp::Proj(_) => {
                let range = types.first().and_then(|t| t.dtype.int_range());
                (operands[0].constant, None, false, range)
            }
        };
        Info {
            types,
            constant,
            splat,
            positive,
            range,
        }
    }

    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        if a.types != b.types {
            let ta: Vec<String> = a.types.iter().map(|t| t.to_string()).collect();
            let tb: Vec<String> = b.types.iter().map(|t| t.to_string()).collect();
            self.conflicts.push(format!(
                "merged values of types {} and {}",
                ta.join(", "),
                tb.join(", ")
            ));
        }
        let before = a.facts();
        a.constant |= b.constant;
        a.splat = a.splat.or(b.splat);
        a.positive |= b.positive;
        // Both intervals hold for the one value: their intersection does.
        a.range = match (a.range, b.range) {
            (Some((p, q)), Some((r, t))) => Some((p.max(r), q.min(t))),
            (x, y) => x.or(y),
        };
        DidMerge(a.facts() != before, a.facts() != b.facts())
    }
}
