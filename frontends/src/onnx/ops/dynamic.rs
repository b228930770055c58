//! Ops whose output sizes depend on the data — NonZero, Compress, NonMaxSuppression, Unique:
//! each becomes a node defining a fresh symbol for its count, bound when the model runs.

use crate::onnx::OpError;

use ir::{DType, Dim, Op, Shape};

use super::{axis, one, s, Res};
use crate::onnx::import::{Ctx, Node};

pub fn nonzero(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let count = ctx.fresh_symbol("nonzero");
    let y = ctx.b.op1(Op::NonZero { count }, &[x])?;
    one(ctx, y)
}

/// The entries of the input where the condition holds, along `axis` (of the flattened input
/// without one); a condition shorter than the axis leaves the rest out.
pub fn compress(ctx: &mut Ctx, n: &Node) -> Res {
    let mut x = ctx.ir(n.req(0)?)?;
    let c = ctx.ir(n.req(1)?)?;
    super::rank_in(&ctx.b, c, &[1], "condition")?;
    let a = match n.int("axis")? {
        Some(a) => axis(a, ctx.b.rank(x))?,
        None => {
            let total = ctx.b.shape(x).numel()?;
            x = ctx.b.reshape(x, Shape::new(vec![total]))?;
            0
        }
    };
    let len = ctx.b.shape(c).dim(0).clone();
    let along = ctx.b.shape(x).dim(a).clone();
    if len != along {
        match (len.as_const(), along.as_const()) {
            (Some(l), Some(m)) if l > m => {
                return Err(format!("a condition of {l} entries for an axis of {m}").into())
            }
            (Some(_), Some(_)) => x = super::slice_axis(&mut ctx.b, x, a, Dim::Const(0), len, 1)?,
            // The entries the condition covers (a longer condition reads past the axis: an
            // index error when the model runs).
            _ => {
                let cut = along.minimum(&len)?;
                x = super::slice_axis(&mut ctx.b, x, a, Dim::Const(0), cut, 1)?;
            }
        }
    }
    let count = ctx.fresh_symbol("compress");
    let idx = ctx.b.op1(
        Op::NonZero {
            count: count.clone(),
        },
        &[c],
    )?;
    let idx = ctx.b.reshape(idx, Shape::new(vec![count]))?;
    let y = ctx.b.op1(Op::Gather { axis: a as i64 }, &[x, idx])?;
    one(ctx, y)
}

pub fn non_max_suppression(ctx: &mut Ctx, n: &Node) -> Res {
    let boxes = ctx.ir(n.req(0)?)?;
    let scores = ctx.ir(n.req(1)?)?;
    // Optional scalars (ONNX gives them as [1] tensors): the most boxes per class (default
    // 0: none), the IoU threshold (default 0) and the score threshold (none by default).
    let mut scalar = |i: usize, dtype: DType| -> Result<Option<ir::Value>, OpError> {
        let Some(name) = n.input(i) else {
            return Ok(None);
        };
        let v = ctx.ir(name)?;
        let v = ctx.b.reshape(v, Shape::scalar())?;
        ctx.b.cast(v, dtype).map(Some).map_err(s)
    };
    let max = scalar(2, DType::I64)?;
    let iou = scalar(3, DType::F32)?;
    let score = scalar(4, DType::F32)?;
    let thresholded = score.is_some();
    let zero_i = ctx.b.scalar(0.0, DType::I64)?;
    let zero_f = ctx.b.scalar(0.0, DType::F32)?;
    let operands = [
        boxes,
        scores,
        max.unwrap_or(zero_i),
        iou.unwrap_or(zero_f),
        score.unwrap_or(zero_f),
    ];
    let op = Op::Nms {
        center: n.int_or("center_point_box", 0)? != 0,
        thresholded,
        count: ctx.fresh_symbol("nms"),
    };
    let y = ctx.b.op1(op, &operands)?;
    one(ctx, y)
}

pub fn unique(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let ax = match n.int("axis")? {
        Some(a) => vec![axis(a, ctx.b.rank(x))? as i64],
        None => vec![],
    };
    let op = Op::Unique {
        axis: ax,
        sorted: n.int_or("sorted", 1)? != 0,
        count: ctx.fresh_symbol("unique"),
    };
    let outs = ctx.b.op(op, &[x])?;
    Ok(outs.into_iter().map(|v| ctx.v(v)).collect())
}
