//! Regions: the subgraph a kernel node (`fused`) owns. A region is a [`Graph`] whose parameters
//! are the node's operands, in order, and whose outputs are the node's results. It prints as a
//! nested block, the verifier checks it like any graph, and the interpreter runs it, so the
//! oracle checks fusion too. Regions are shared (`Arc`): cloning an op never copies one.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::graph::Graph;
use crate::ops::Op;

/// The body of a kernel node.
#[derive(Clone)]
pub struct Region(pub Arc<Graph>);

impl Region {
    pub fn new(g: Graph) -> Region {
        Region(Arc::new(g))
    }

    pub fn graph(&self) -> &Graph {
        &self.0
    }
}

impl PartialEq for Region {
    /// Structural: the same nodes in the same order (see `Graph`'s equality).
    fn eq(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for Region {}

impl Hash for Region {
    /// Hashes the node sequence (ops and types in topological order), consistent with `Eq`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let g = self.graph();
        g.len().hash(state);
        g.outputs().len().hash(state);
        if let Ok(order) = g.topo_order() {
            for id in order {
                let n = g.node(id);
                match n.op() {
                    // Constants hash by type only (their data may be large).
                    Op::Constant { .. } => "constant".hash(state),
                    op => op.hash(state),
                }
                n.types().hash(state);
                n.inputs().len().hash(state);
            }
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({} nodes)", self.graph().len())
    }
}
