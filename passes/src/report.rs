//! What a graph costs to run as it stands, for reports: how many kernels it launches and how
//! many bytes of intermediates it materializes (by the cost model's sizes), and which
//! materialized intermediates a kernel could have kept.

use std::collections::{HashMap, HashSet};

use ir::{Graph, NodeId, Op, OpKind, Value};

use crate::egraph::Target;

/// Kernels and materialized intermediates of a graph.
#[derive(Clone, Debug)]
pub struct Report {
    /// Nodes that run as kernels: everything but parameters, constants and reshapes (views).
    pub kernels: usize,
    /// Bytes of kernel results that other kernels read back (graph outputs excluded).
    pub intermediate_bytes: f64,
    /// Intermediates read by a single kernel that could have computed them itself.
    pub unkept: Vec<String>,
}

fn is_kernel(op: &Op) -> bool {
    !matches!(
        op,
        Op::Param { .. }
            | Op::Constant { .. }
            | Op::Dims { .. }
            | Op::Reshape { .. }
            | Op::Refine { .. }
    )
}

/// What a node contains, for deciding whether two kernels could have been one.
#[derive(Default, Clone, Copy)]
struct Contents {
    heavy: bool,
    reduce: bool,
}

fn contents(op: &Op) -> Contents {
    match op {
        Op::Fused { body, .. } => {
            let g = body.graph();
            let mut c = Contents::default();
            for id in g.node_ids() {
                let k = contents(g.node(id).op());
                c.heavy |= k.heavy;
                c.reduce |= k.reduce;
            }
            c
        }
        Op::Dot { .. }
        | Op::Qdot { .. }
        | Op::Qdot4 { .. }
        | Op::Conv { .. }
        | Op::Qconv { .. }
        | Op::ConvBlocked { .. } => Contents {
            heavy: true,
            reduce: false,
        },
        op if op.kind() == OpKind::Reduce => Contents {
            heavy: false,
            reduce: true,
        },
        _ => Contents::default(),
    }
}

/// Ops a kernel cannot contain at all.
fn opaque(op: &Op) -> bool {
    matches!(
        op.kind(),
        OpKind::Sort | OpKind::Window | OpKind::Source | OpKind::Tree | OpKind::Recurrent
    ) || matches!(
        op,
        Op::ScatterNd { .. } | Op::GatherNd { .. } | Op::ArgMax { .. } | Op::ArgMin { .. }
    )
}

pub fn report(g: &Graph, target: &Target) -> Report {
    let outputs: HashSet<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    let ids = g.node_ids();
    // Readers of each value, looking through reshapes (views).
    let mut readers: HashMap<Value, Vec<NodeId>> = HashMap::new();
    let mut view_of: HashMap<Value, Value> = HashMap::new();
    for &id in &ids {
        let n = g.node(id);
        for &v in n.inputs() {
            let src = *view_of.get(&v).unwrap_or(&v);
            if matches!(n.op(), Op::Reshape { .. } | Op::Refine { .. }) {
                view_of.insert(Value::new(id, 0), src);
            } else {
                readers.entry(src).or_default().push(id);
            }
        }
    }
    let mut kernels = 0;
    let mut bytes = 0.0;
    let mut unkept = Vec::new();
    for &id in &ids {
        let n = g.node(id);
        if !is_kernel(n.op()) {
            continue;
        }
        kernels += 1;
        for (i, ty) in n.types().iter().enumerate() {
            let v = Value::new(id, i as u32);
            let rs = readers.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            if rs.is_empty() || outputs.contains(&v) {
                continue;
            }
            bytes += target.bytes(ty);
            let [reader] = rs else { continue };
            let (a, b) = (g.node(id).op(), g.node(*reader).op());
            if opaque(a) || opaque(b) {
                continue;
            }
            let (ca, cb) = (contents(a), contents(b));
            // A dot/conv kernel takes only views of its operands, holds one dot/conv and no
            // reduction: those boundaries are where kernels must materialize.
            let must = cb.heavy || (ca.heavy && cb.reduce);
            if !must {
                unkept.push(format!(
                    "{} ({}) is read only by {} ({})",
                    a.mnemonic(),
                    ty,
                    b.mnemonic(),
                    kind(b)
                ));
            }
        }
    }
    Report {
        kernels,
        intermediate_bytes: bytes,
        unkept,
    }
}

fn kind(op: &Op) -> String {
    match op {
        Op::Fused { kind, .. } => kind.clone(),
        op => op.mnemonic().to_string(),
    }
}
