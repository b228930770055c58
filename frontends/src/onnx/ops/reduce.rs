//! Reductions (the ReduceX family with keepdims and axes as attribute or input) and
//! arg-reductions.

use crate::onnx::OpError;

use ir::{DType, Dim, Op, Shape};

use super::{axes, axis, one, Res};
use crate::onnx::import::{Ctx, Node};

/// Axes come from an input from opset 18 (13 for ReduceSum), before that from an attribute.
fn reduce_axes(ctx: &Ctx, n: &Node, rank: usize) -> Result<Option<Vec<usize>>, OpError> {
    let from_input = if n.op() == "ReduceSum" {
        n.version >= 13
    } else {
        n.version >= 18
    };
    let list = if from_input {
        n.input(1).map(|a| ctx.static_ints(a)).transpose()?
    } else {
        n.ints("axes")?
    };
    match list {
        Some(l) if !l.is_empty() => Ok(Some(axes(&l, rank)?)),
        _ => Ok(None),
    }
}

pub fn reduce(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let rank = ctx.b.rank(x);
    let keep = n.int_or("keepdims", 1)? != 0;
    let ax = match reduce_axes(ctx, n, rank)? {
        Some(a) => a,
        None if n.int_or("noop_with_empty_axes", 0)? != 0 => return one(ctx, x),
        None => (0..rank).collect(),
    };
    let ax: Vec<i64> = ax.iter().map(|&a| a as i64).collect();
    let b = &mut ctx.b;
    // Max and min of bools are any and all: reduce them as bytes.
    if b.dtype(x) == DType::Bool && matches!(n.op(), "ReduceMax" | "ReduceMin") {
        let u = b.cast(x, DType::U8)?;
        let y = if n.op() == "ReduceMax" {
            b.reduce_max(u, &ax, keep)
        } else {
            b.reduce(|axes| Op::ReduceMin { axes }, u, &ax, keep)
        }?;
        let y = b.cast(y, DType::Bool)?;
        return one(ctx, y);
    }
    let sum = |b: &mut ir::Builder, v| b.reduce_sum(v, &ax, keep);
    let y = match n.op() {
        "ReduceSum" => sum(b, x),
        "ReduceMean" => b.reduce_mean(x, &ax, keep),
        "ReduceMax" => b.reduce_max(x, &ax, keep),
        "ReduceMin" => b.reduce(|axes| Op::ReduceMin { axes }, x, &ax, keep),
        "ReduceProd" => b.reduce(|axes| Op::ReduceProd { axes }, x, &ax, keep),
        "ReduceL1" => b.unary(Op::Abs, x).and_then(|a| sum(b, a)),
        "ReduceL2" => b
            .mul(x, x)
            .and_then(|sq| sum(b, sq))
            .and_then(|t| b.sqrt(t)),
        "ReduceSumSquare" => b.mul(x, x).and_then(|sq| sum(b, sq)),
        "ReduceLogSum" => sum(b, x).and_then(|t| b.unary(Op::Log, t)),
        "ReduceLogSumExp" => (|| {
            // log(sum(exp(x - m))) + m, with m the max (0 where the max is infinite).
            let m = b.reduce_max(x, &ax, true)?;
            let inf = b.unary(Op::IsInf, m)?;
            let zero = b.scalar_like(0.0, m)?;
            let m = b.op1(Op::Select, &[inf, zero, m])?;
            let d = b.sub(x, m)?;
            let e = b.exp(d)?;
            let t = b.reduce_sum(e, &ax, true)?;
            let l = b.unary(Op::Log, t)?;
            let y = b.add(l, m)?;
            if keep {
                Ok(y)
            } else {
                let dims: Vec<Dim> = b
                    .shape(y)
                    .dims()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(&(*i as i64)))
                    .map(|(_, d)| d.clone())
                    .collect();
                b.reshape(y, Shape::new(dims))
            }
        })(),
        other => return Err(format!("`{other}` is not a reduction").into()),
    }?;
    one(ctx, y)
}

pub fn arg(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let rank = ctx.b.rank(x);
    let a = axis(n.int_or("axis", 0)?, rank)? as i64;
    let last = n.int_or("select_last_index", 0)? != 0;
    let op = if n.op() == "ArgMax" {
        Op::ArgMax { axis: a, last }
    } else {
        Op::ArgMin { axis: a, last }
    };
    let y = ctx.b.op1(op, &[x])?;
    let y = if n.int_or("keepdims", 1)? != 0 {
        let mut dims = ctx.b.shape(y).dims().to_vec();
        dims.insert(a as usize, Dim::Const(1));
        ctx.b.reshape(y, Shape::new(dims))?
    } else {
        y
    };
    let _ = DType::I64;
    one(ctx, y)
}
