//! Import functions, one file per family. Each takes the import context and a node and returns
//! the node's output values; errors are plain messages that the driver tags with the node.

pub mod ew;
pub mod ml;
pub mod nn;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod shape;

use ir::{Dim, Value};

use super::import::Ctx;
use super::value::V;

pub type Res = Result<Vec<V>, String>;

/// Error conversion for `?` on builder results.
pub fn s(e: impl ToString) -> String {
    e.to_string()
}

/// A single IR result.
pub fn one(ctx: &Ctx, v: Value) -> Res {
    Ok(vec![ctx.v(v)])
}

/// Normalizes a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Normalized, sorted axes; duplicates are an error.
pub fn axes(list: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = list
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    let n = out.len();
    out.dedup();
    if out.len() != n {
        return Err(format!("axes {list:?} repeat an axis"));
    }
    Ok(out)
}

/// The product of dims.
pub fn product(dims: &[Dim]) -> Result<Dim, String> {
    dims.iter()
        .try_fold(Dim::Const(1), |a, d| a.mul(d))
        .map_err(s)
}
