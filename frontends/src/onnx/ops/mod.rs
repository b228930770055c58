//! Import functions, one file per family. Each takes the import context and a node and returns
//! the node's output values; errors are plain messages that the driver tags with the node.

use crate::onnx::OpError;

pub mod attention;
pub mod control;
pub mod dynamic;
pub mod ew;
pub mod misc;
pub mod ml;
pub mod nn;
pub mod qlinear;
pub mod quant;
pub mod reduce;
pub mod resize;
pub mod resize_dyn;
pub mod rnn;
pub mod sample;
pub mod seq;
pub mod shape;
pub mod spectral;
pub mod stateful;

use ir::{Dim, Value};

use super::import::Ctx;
use super::value::V;

pub type Res = Result<Vec<V>, OpError>;

/// Error conversion where `?` does not apply (a result returned as it is).
pub fn s(e: impl Into<OpError>) -> OpError {
    e.into()
}

/// A single IR result.
pub fn one(ctx: &Ctx, v: Value) -> Res {
    Ok(vec![ctx.v(v)])
}

/// Normalizes a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}").into())
    }
}

/// Normalized, sorted axes; duplicates are an error.
pub fn axes(list: &[i64], rank: usize) -> Result<Vec<usize>, OpError> {
    let mut out = list
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    let n = out.len();
    out.dedup();
    if out.len() != n {
        return Err(format!("axes {list:?} repeat an axis").into());
    }
    Ok(out)
}

/// The rank of `v`, which must be one of `allowed`.
pub fn rank_in(b: &ir::Builder, v: Value, allowed: &[usize], what: &str) -> Result<usize, OpError> {
    let r = b.rank(v);
    if allowed.contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "{what} has rank {r}, expected {}",
            allowed
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )
        .into())
    }
}

/// The rank of `v`, which must be at least `min`.
pub fn rank_at_least(b: &ir::Builder, v: Value, min: usize, what: &str) -> Result<usize, OpError> {
    let r = b.rank(v);
    if r >= min {
        Ok(r)
    } else {
        Err(format!("{what} has rank {r}, expected at least {min}").into())
    }
}

/// The product of dims.
pub fn product(dims: &[Dim]) -> Result<Dim, OpError> {
    dims.iter()
        .try_fold(Dim::Const(1), |a, d| a.mul(d))
        .map_err(s)
}

/// Elements `start, start+stride, ...` before `end` along `axis` of `x`.
pub fn slice_axis(
    b: &mut ir::Builder,
    x: Value,
    axis: usize,
    start: Dim,
    end: Dim,
    stride: i64,
) -> Result<Value, OpError> {
    let dims = b.shape(x).dims().to_vec();
    let mut st: Vec<Dim> = vec![Dim::Const(0); dims.len()];
    let mut lim = dims.clone();
    let mut strides = vec![1; dims.len()];
    st[axis] = start;
    lim[axis] = end;
    strides[axis] = stride;
    b.op1(
        ir::Op::Slice {
            start: st,
            limit: lim,
            stride: strides,
        },
        &[x],
    )
    .map_err(s)
}
