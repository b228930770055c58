//! Shape and data-movement operators. Where inputs are known (constants, or dims from
//! `Shape`), results stay known, so shape subgraphs fold to static or symbolic dims.

use crate::onnx::OpError;

use ir::{DType, Dim, Op, PadMode, ReduceKind, ScatterReduction, Shape, Value};

use super::{axes, axis, one, product, s, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::value::V;

fn known_rank1(ctx: &Ctx, name: &str) -> Result<Option<(Vec<Dim>, bool, DType)>, OpError> {
    let v = ctx.get(name)?;
    if v.rank() > 1 {
        return Ok(None);
    }
    Ok(v.known_dims().map(|d| (d, v.rank() == 0, v.dtype())))
}

pub fn shape(ctx: &mut Ctx, n: &Node) -> Res {
    let dims = ctx.ty(n.req(0)?)?.shape.into_dims();
    let r = dims.len() as i64;
    let clampi = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
    let start = clampi(n.int_or("start", 0)?);
    let end = clampi(n.int_or("end", r)?);
    let dims = if start < end {
        dims[start..end].to_vec()
    } else {
        vec![]
    };
    Ok(vec![V::dims(dims, false, DType::I64)])
}

pub fn size(ctx: &mut Ctx, n: &Node) -> Res {
    let dims = ctx.ty(n.req(0)?)?.shape.into_dims();
    Ok(vec![V::dims(vec![product(&dims)?], true, DType::I64)])
}

/// The target shape of a reshape: 0 copies the input dim (unless `allowzero`), -1 is inferred.
fn reshape_dims(input: &Shape, spec: &[Dim], allowzero: bool) -> Result<Vec<Dim>, OpError> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, d) in spec.iter().enumerate() {
        match d.as_const() {
            Some(0) if !allowzero => out.push(
                input
                    .dims()
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("shape entry {i} copies a dim the input lacks"))?,
            ),
            Some(-1) => {
                if infer.replace(i).is_some() {
                    return Err("more than one -1 in the target shape".into());
                }
                out.push(Dim::Const(1));
            }
            Some(c) if c < -1 => return Err(format!("invalid shape entry {c}").into()),
            _ => out.push(d.clone()),
        }
    }
    if let Some(i) = infer {
        let total = product(input.dims())?;
        let rest = product(&out)?;
        let q = match (total.as_const(), rest.as_const()) {
            (Some(t), Some(r)) if r != 0 && t % r == 0 => Dim::Const(t / r),
            (Some(0), Some(0)) => Dim::Const(0),
            // Not provably a multiple: the quotient, and the reshape checks the element
            // counts at run time.
            _ => match total.exact_div(&rest) {
                Some(q) => q,
                None => total.floor_div(&rest).map_err(|e| {
                    format!("cannot infer the -1 dim: {total} elements over {rest}: {e}")
                })?,
            },
        };
        out[i] = q;
    }
    Ok(out)
}

fn do_reshape(ctx: &mut Ctx, data: &str, spec: &[Dim], allowzero: bool) -> Res {
    let in_shape = ctx.ty(data)?.shape;
    let dims = reshape_dims(&in_shape, spec, allowzero)?;
    if let Some((vals, _, dtype)) = known_rank1(ctx, data)? {
        if dims.len() <= 1 && ctx.get(data)?.value.is_none() {
            return Ok(vec![V::dims(vals, dims.is_empty(), dtype)]);
        }
    }
    let x = ctx.ir(data)?;
    let y = ctx.b.reshape(x, Shape::new(dims))?;
    one(ctx, y)
}

pub fn reshape_v1(ctx: &mut Ctx, n: &Node) -> Res {
    let spec: Vec<Dim> = n
        .ints("shape")?
        .ok_or("missing attribute `shape`")?
        .into_iter()
        .map(Dim::Const)
        .collect();
    do_reshape(ctx, n.req(0)?, &spec, false)
}

pub fn reshape(ctx: &mut Ctx, n: &Node) -> Res {
    let spec = ctx.static_dims(n.req(1)?)?;
    do_reshape(ctx, n.req(0)?, &spec, n.int_or("allowzero", 0)? != 0)
}

pub fn flatten(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let dims = ctx.ty(name)?.shape.into_dims();
    let r = dims.len();
    let a = n.int_or("axis", 1)?;
    let a = if a < 0 { a + r as i64 } else { a };
    if !(0..=r as i64).contains(&a) {
        return Err(format!("axis {a} is out of range for rank {r}").into());
    }
    let (lo, hi) = dims.split_at(a as usize);
    let x = ctx.ir(name)?;
    let y = ctx
        .b
        .reshape(x, Shape::new(vec![product(lo)?, product(hi)?]))?;
    one(ctx, y)
}

/// Axes from the attribute (old opsets) or the second input (new opsets).
fn axes_operand(ctx: &Ctx, n: &Node, input: usize) -> Result<Option<Vec<i64>>, OpError> {
    if let Some(a) = n.ints("axes")? {
        return Ok(Some(a));
    }
    n.input(input).map(|name| ctx.static_ints(name)).transpose()
}

pub fn squeeze(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let dims = ctx.ty(name)?.shape.into_dims();
    let drop: Vec<usize> = match axes_operand(ctx, n, 1)? {
        Some(a) => axes(&a, dims.len())?,
        None => (0..dims.len())
            .filter(|&i| dims[i] == Dim::Const(1))
            .collect(),
    };
    let mut ones = dims.clone();
    for &a in &drop {
        if dims[a].as_const().is_some_and(|d| d != 1) {
            return Err(format!("cannot squeeze axis {a} of size {}", dims[a]).into());
        }
        // A symbolic dim squeezed away is 1 at run time (checked there).
        ones[a] = Dim::Const(1);
    }
    let kept: Vec<Dim> = (0..dims.len())
        .filter(|i| !drop.contains(i))
        .map(|i| dims[i].clone())
        .collect();
    if ones != dims {
        let x = ctx.ir(name)?;
        let x = ctx.b.refine(x, Shape::new(ones))?;
        let y = ctx.b.reshape(x, Shape::new(kept))?;
        return one(ctx, y);
    }
    do_reshape(ctx, name, &kept, true)
}

pub fn unsqueeze(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let dims = ctx.ty(name)?.shape.into_dims();
    let ax = axes_operand(ctx, n, 1)?.ok_or("missing axes")?;
    let out_rank = dims.len() + ax.len();
    let ax = axes(&ax, out_rank)?;
    let mut it = dims.into_iter();
    let out: Vec<Dim> = (0..out_rank)
        .map(|i| {
            if ax.contains(&i) {
                Dim::Const(1)
            } else {
                it.next().unwrap_or(Dim::Const(1))
            }
        })
        .collect();
    do_reshape(ctx, name, &out, true)
}

pub fn transpose(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let r = ctx.b.rank(x) as i64;
    let perm = n.ints("perm")?.unwrap_or_else(|| (0..r).rev().collect());
    let perm: Vec<i64> = perm
        .iter()
        .map(|&p| axis(p, r as usize).map(|a| a as i64))
        .collect::<Result<_, _>>()?;
    let y = ctx.b.transpose(x, &perm)?;
    one(ctx, y)
}

pub fn concat(ctx: &mut Ctx, n: &Node) -> Res {
    let names: Vec<&str> = (0..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    let first = *names.first().ok_or("needs at least one input")?;
    let rank = ctx.get(first)?.rank();
    let a = axis(
        n.int("axis")?.ok_or("missing attribute `axis`")?,
        rank.max(1),
    )?;
    // Concatenating known vectors stays known.
    let mut known = Vec::new();
    for name in &names {
        match known_rank1(ctx, name)? {
            Some((d, false, _)) => known.extend(d),
            _ => {
                known.clear();
                break;
            }
        }
    }
    let all_known = names.iter().all(|n| {
        ctx.get(n)
            .map(|v| v.rank() == 1 && v.known_dims().is_some())
            .unwrap_or(false)
    });
    if all_known
        && names
            .iter()
            .all(|n| ctx.get(n).map(|v| v.value.is_none()).unwrap_or(false))
    {
        return Ok(vec![V::dims(known, false, ctx.get(first)?.dtype())]);
    }
    let mut vals = Vec::new();
    for name in &names {
        vals.push(ctx.ir(name)?);
    }
    // Off the axis, operands must agree: where symbols cannot prove it, at run time (each
    // axis takes the first constant dim among the operands, else operand 0's).
    if vals.iter().all(|&v| ctx.b.rank(v) == rank) {
        let mut want = ctx.b.shape(vals[0]).dims().to_vec();
        for (j, w) in want.iter_mut().enumerate() {
            if let Some(c) = vals.iter().find_map(|&v| ctx.b.shape(v).dim(j).as_const()) {
                if j != a {
                    *w = Dim::Const(c);
                }
            }
        }
        for v in vals.iter_mut() {
            let mut dims = want.clone();
            dims[a] = ctx.b.shape(*v).dim(a).clone();
            *v = ctx.b.refine_unproven(*v, &Shape::new(dims))?;
        }
    }
    let y = ctx.b.op1(Op::Concat { axis: a as i64 }, &vals)?;
    one(ctx, y)
}

pub fn split(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let x = ctx.ir(name)?;
    let dims = ctx.b.shape(x).dims().to_vec();
    let a = axis(n.int_or("axis", 0)?, dims.len())?;
    let outs = n.num_outputs();
    let sizes: Vec<Dim> = if let Some(sp) = n.ints("split")? {
        sp.into_iter().map(Dim::Const).collect()
    } else if let Some(sp) = n.input(1) {
        ctx.static_ints(sp)?.into_iter().map(Dim::Const).collect()
    } else {
        let parts = n.int("num_outputs")?.unwrap_or(outs as i64).max(1);
        if parts as usize > outs.max(1) {
            return Err(format!("num_outputs is {parts} but the node has {outs} outputs").into());
        }
        let total = dims[a]
            .as_const()
            .ok_or("splitting a symbolic axis evenly is not supported")?;
        let chunk = (total + parts - 1) / parts;
        (0..parts)
            .map(|i| Dim::Const((total - i * chunk).clamp(0, chunk)))
            .collect()
    };
    let mut start = Dim::Const(0);
    let mut out = Vec::new();
    for size in sizes {
        let end = start.add(&size)?;
        let piece = super::slice_axis(&mut ctx.b, x, a, start.clone(), end.clone(), 1)?;
        out.push(ctx.v(piece));
        start = end;
    }
    Ok(out)
}

/// Resolves ONNX slice bounds against an extent, with numpy's clamping.
fn slice_bounds(start: i64, end: i64, step: i64, n: &Dim) -> Result<(Dim, Dim), OpError> {
    // Bounds past the end clamp to it; on a symbolic axis that needs a sentinel: ONNX's
    // recommended INT_MAX/INT_MIN in 64 or 32 bits (tf2onnx), or jax2tf's 10^9. Any bound of
    // 10^9 or more counts (no symbolic axis of a real model is that long); smaller constants
    // are taken as within the axis, which the run checks.
    const BIG: i64 = 1_000_000_000;
    if let Some(n) = n.as_const() {
        let norm = |x: i64| if x < 0 { x + n } else { x };
        let (s, e) = if step > 0 {
            (norm(start).clamp(0, n), norm(end).clamp(0, n))
        } else {
            (norm(start).clamp(-1, n - 1), norm(end).clamp(-1, n - 1))
        };
        let e = if step > 0 { e.max(s) } else { e.min(s) };
        return Ok((Dim::Const(s), Dim::Const(e)));
    }
    // A symbolic extent: bounds counted from either end, clamped to the axis as symbols
    // allow (`min(n, 20)`: a data-dependent count cut to the first 20).
    let sym = |x: i64, is_end: bool| -> Result<Dim, OpError> {
        if x >= BIG {
            Ok(if step > 0 {
                n.clone()
            } else {
                n.sub(&Dim::Const(1))?
            })
        } else if x <= -BIG {
            Ok(if step > 0 || !is_end {
                Dim::Const(0)
            } else {
                Dim::Const(-1)
            })
        } else if x < 0 {
            let from_end = n.add(&Dim::Const(x))?;
            let floor = Dim::Const(if step > 0 || !is_end { 0 } else { -1 });
            from_end.maximum(&floor).map_err(s)
        } else if step > 0 {
            n.minimum(&Dim::Const(x)).map_err(s)
        } else {
            let last = n.sub(&Dim::Const(1))?;
            last.minimum(&Dim::Const(x)).map_err(s)
        }
    };
    Ok((sym(start, false)?, sym(end, true)?))
}

fn do_slice(
    ctx: &mut Ctx,
    name: &str,
    starts: &[i64],
    ends: &[i64],
    ax: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Res {
    let ty = ctx.ty(name)?;
    let rank = ty.rank();
    let ax: Vec<i64> = ax.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || ax.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut st: Vec<Dim> = vec![Dim::Const(0); rank];
    let mut lim: Vec<Dim> = ty.shape.dims().to_vec();
    let mut stride = vec![1i64; rank];
    for i in 0..starts.len() {
        let a = axis(ax[i], rank)?;
        if steps[i] == 0 {
            return Err("slice step cannot be 0".into());
        }
        let (b, e) = slice_bounds(starts[i], ends[i], steps[i], ty.shape.dim(a))?;
        st[a] = b;
        lim[a] = e;
        stride[a] = steps[i];
    }
    // Slicing a known vector stays known.
    if let Some((vals, false, dtype)) = known_rank1(ctx, name)? {
        if let (Some(b), Some(e)) = (st[0].as_const(), lim[0].as_const()) {
            if ctx.get(name)?.value.is_none() {
                let mut out = Vec::new();
                let mut i = b;
                while (stride[0] > 0 && i < e) || (stride[0] < 0 && i > e) {
                    out.push(vals[i as usize].clone());
                    i += stride[0];
                }
                return Ok(vec![V::dims(out, false, dtype)]);
            }
        }
    }
    let x = ctx.ir(name)?;
    let y = ctx.b.op1(
        Op::Slice {
            start: st,
            limit: lim,
            stride,
        },
        &[x],
    )?;
    one(ctx, y)
}

pub fn slice_v1(ctx: &mut Ctx, n: &Node) -> Res {
    let starts = n.ints("starts")?.ok_or("missing attribute `starts`")?;
    let ends = n.ints("ends")?.ok_or("missing attribute `ends`")?;
    do_slice(ctx, n.req(0)?, &starts, &ends, n.ints("axes")?, None)
}

pub fn slice(ctx: &mut Ctx, n: &Node) -> Res {
    let starts = ctx.static_ints(n.req(1)?)?;
    let ends = ctx.static_ints(n.req(2)?)?;
    let ax = n.input(3).map(|a| ctx.static_ints(a)).transpose()?;
    let steps = n.input(4).map(|a| ctx.static_ints(a)).transpose()?;
    do_slice(ctx, n.req(0)?, &starts, &ends, ax, steps)
}

pub fn gather(ctx: &mut Ctx, n: &Node) -> Res {
    let (data, idx) = (n.req(0)?, n.req(1)?);
    let rank = ctx.get(data)?.rank();
    let a = axis(n.int_or("axis", 0)?, rank)?;
    // Picking from a known vector with known indices stays known.
    if let (Some((vals, false, dtype)), Some(ix)) =
        (known_rank1(ctx, data)?, ctx.get(idx)?.known_ints())
    {
        let iv = ctx.get(idx)?;
        if iv.rank() <= 1 && ctx.get(data)?.value.is_none() {
            let len = vals.len() as i64;
            let picked = ix
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + len } else { i };
                    vals.get(j as usize)
                        .cloned()
                        .filter(|_| j >= 0)
                        .ok_or_else(|| format!("index {i} is out of range for {len} elements"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let scalar = iv.rank() == 0;
            return Ok(vec![V::dims(picked, scalar, dtype)]);
        }
    }
    let (x, i) = (ctx.ir(data)?, ctx.ir(idx)?);
    let y = ctx.b.op1(Op::Gather { axis: a as i64 }, &[x, i])?;
    one(ctx, y)
}

/// Full index tuples `[..., rank]` addressing `data` element by element: `idx` along `axis`
/// (negatives wrapped), the position itself along every other axis.
pub fn element_tuples(
    ctx: &mut Ctx,
    data_shape: &Shape,
    idx: Value,
    axis: usize,
) -> Result<Value, OpError> {
    let b = &mut ctx.b;
    let idx = b.cast(idx, DType::I64)?;
    let shape = b.shape(idx).clone();
    let rank = shape.rank();
    let zero = b.scalar_like(0.0, idx)?;
    let n = b.dim_product(&[data_shape.dim(axis).clone()], DType::I64)?;
    let n = b.broadcast_to(n, &shape)?;
    let neg = b.op1(Op::Lt, &[idx, zero])?;
    let wrapped = b.add(idx, n)?;
    let idx = b.op1(Op::Select, &[neg, wrapped, idx])?;
    let mut cols = Vec::with_capacity(rank);
    let mut one_more = shape.dims().to_vec();
    one_more.push(Dim::Const(1));
    for a in 0..rank {
        let col = if a == axis {
            idx
        } else {
            b.op1(
                Op::Iota {
                    axis: a as i64,
                    ty: ir::TensorType::new(DType::I64, shape.clone()),
                },
                &[],
            )?
        };
        cols.push(b.reshape(col, Shape::new(one_more.clone()))?);
    }
    b.op1(Op::Concat { axis: rank as i64 }, &cols).map_err(s)
}

pub fn gather_elements(ctx: &mut Ctx, n: &Node) -> Res {
    let data = ctx.ir(n.req(0)?)?;
    let idx = ctx.ir(n.req(1)?)?;
    let shape = ctx.b.shape(data).clone();
    let a = axis(n.int_or("axis", 0)?, shape.rank())?;
    let tuples = element_tuples(ctx, &shape, idx, a)?;
    let y = ctx.b.op1(Op::GatherNd { batch_dims: 0 }, &[data, tuples])?;
    one(ctx, y)
}

pub fn gather_nd(ctx: &mut Ctx, n: &Node) -> Res {
    let data = ctx.ir(n.req(0)?)?;
    let idx = ctx.ir(n.req(1)?)?;
    let bd = n.int_or("batch_dims", 0)?;
    let y = ctx.b.op1(Op::GatherNd { batch_dims: bd }, &[data, idx])?;
    one(ctx, y)
}

fn reduction(n: &Node) -> Result<ScatterReduction, OpError> {
    Ok(match n.string_or("reduction", "none")?.as_str() {
        "none" => ScatterReduction::None,
        "add" => ScatterReduction::Add,
        "mul" => ScatterReduction::Mul,
        "max" => ScatterReduction::Max,
        "min" => ScatterReduction::Min,
        r => return Err(format!("unknown reduction `{r}`").into()),
    })
}

pub fn scatter_nd(ctx: &mut Ctx, n: &Node) -> Res {
    let data = ctx.ir(n.req(0)?)?;
    let idx = ctx.ir(n.req(1)?)?;
    let upd = ctx.ir(n.req(2)?)?;
    let y = ctx.b.op1(
        Op::ScatterNd {
            reduction: reduction(n)?,
        },
        &[data, idx, upd],
    )?;
    one(ctx, y)
}

pub fn scatter_elements(ctx: &mut Ctx, n: &Node) -> Res {
    let data = ctx.ir(n.req(0)?)?;
    let idx = ctx.ir(n.req(1)?)?;
    let upd = ctx.ir(n.req(2)?)?;
    let shape = ctx.b.shape(data).clone();
    let a = axis(n.int_or("axis", 0)?, shape.rank())?;
    let tuples = element_tuples(ctx, &shape, idx, a)?;
    let y = ctx.b.op1(
        Op::ScatterNd {
            reduction: reduction(n)?,
        },
        &[data, tuples, upd],
    )?;
    one(ctx, y)
}

pub fn expand(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let target = Shape::new(ctx.static_dims(n.req(1)?)?);
    let x = ctx.ir(name)?;
    let shape = ctx.b.shape(x).clone();
    let out = ctx.b.broadcast_shapes(&shape, &target)?;
    let y = ctx.b.broadcast_to(x, &out)?;
    one(ctx, y)
}

pub fn tile(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let reps = ctx.static_ints(n.req(1)?)?;
    let dims = ctx.b.shape(x).dims().to_vec();
    if reps.len() != dims.len() {
        return Err(format!("{} repeats for rank {}", reps.len(), dims.len()).into());
    }
    // [d0, d1] -> [1, d0, 1, d1] -> [r0, d0, r1, d1] -> [r0*d0, r1*d1]
    let mut inter = Vec::new();
    let mut wide = Vec::new();
    let mut out = Vec::new();
    for (d, &r) in dims.iter().zip(&reps) {
        if r < 0 {
            return Err(format!("negative repeat {r}").into());
        }
        inter.extend([Dim::Const(1), d.clone()]);
        wide.extend([Dim::Const(r), d.clone()]);
        out.push(d.mul(&Dim::Const(r))?);
    }
    let y = ctx.b.reshape(x, Shape::new(inter))?;
    let y = ctx.b.broadcast_to(y, &Shape::new(wide))?;
    let y = ctx.b.reshape(y, Shape::new(out))?;
    one(ctx, y)
}

fn pad_mode(mode: &str) -> Result<PadMode, OpError> {
    Ok(match mode {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => return Err(format!("unknown pad mode `{m}`").into()),
    })
}

fn do_pad(ctx: &mut Ctx, x: Value, pads: &[i64], value: Value, mode: PadMode) -> Res {
    let r = ctx.b.rank(x);
    if pads.len() != 2 * r {
        return Err(format!("{} pads for rank {r}", pads.len()).into());
    }
    let (mut low, mut high) = (pads[..r].to_vec(), pads[r..].to_vec());
    let mut x = x;
    if mode != PadMode::Constant && pads.iter().any(|&p| p < 0) {
        // Crop first; the modes only extend.
        let crop_low: Vec<i64> = low.iter().map(|&p| p.min(0)).collect();
        let crop_high: Vec<i64> = high.iter().map(|&p| p.min(0)).collect();
        x = ctx.b.op1(
            Op::Pad {
                low: crop_low,
                high: crop_high,
                mode: PadMode::Constant,
            },
            &[x, value],
        )?;
        low.iter_mut().for_each(|p| *p = (*p).max(0));
        high.iter_mut().for_each(|p| *p = (*p).max(0));
    }
    let y = ctx.b.op1(Op::Pad { low, high, mode }, &[x, value])?;
    one(ctx, y)
}

pub fn pad_v1(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let pads = n
        .ints("pads")?
        .or(n.ints("paddings")?)
        .ok_or("missing attribute `pads`")?;
    let v = ctx
        .b
        .scalar(n.float_or("value", 0.0)? as f64, ctx.b.dtype(x))?;
    do_pad(
        ctx,
        x,
        &pads,
        v,
        pad_mode(&n.string_or("mode", "constant")?)?,
    )
}

pub fn pad(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let r = ctx.b.rank(x);
    let raw = ctx.static_ints(n.req(1)?)?;
    let pads = match n.input(3) {
        Some(a) => {
            let ax = ctx.static_ints(a)?;
            if raw.len() != 2 * ax.len() {
                return Err("pads do not match axes".into());
            }
            let mut full = vec![0; 2 * r];
            for (i, &a) in ax.iter().enumerate() {
                let a = axis(a, r)?;
                full[a] = raw[i];
                full[r + a] = raw[ax.len() + i];
            }
            full
        }
        None => raw,
    };
    let value = match n.input(2) {
        Some(v) => super::ew::scalar_input(ctx, v)?,
        None => ctx.b.scalar(0.0, ctx.b.dtype(x))?,
    };
    do_pad(
        ctx,
        x,
        &pads,
        value,
        pad_mode(&n.string_or("mode", "constant")?)?,
    )
}

/// Range whose bounds are only known at run time: ceil((limit - start) / delta) elements
/// (computed in f64), their count a symbol bound when it runs.
fn range_at_run_time(ctx: &mut Ctx, n: &Node) -> Res {
    let (st, li, de) = (n.req(0)?, n.req(1)?, n.req(2)?);
    let dtype = ctx.get(st)?.dtype();
    let mut scalar = |name: &str| -> Result<Value, OpError> {
        let v = ctx.ir(name)?;
        let v = ctx.b.reshape(v, Shape::scalar())?;
        ctx.b.cast(v, DType::F64).map_err(s)
    };
    let (a, b, d) = (scalar(st)?, scalar(li)?, scalar(de)?);
    let count = ctx.fresh_symbol("range");
    let bb = &mut ctx.b;
    let span = bb.sub(b, a)?;
    let q = bb.div(span, d)?;
    let q = bb.unary(Op::Ceil, q)?;
    let n_steps = bb.cast(q, DType::I64)?;
    let i = bb.op1(Op::DynIota { count }, &[n_steps])?;
    let i = bb.cast(i, DType::F64)?;
    let scaled = bb.mul(i, d)?;
    let y = bb.add(scaled, a)?;
    let y = bb.cast(y, dtype)?;
    one(ctx, y)
}

pub fn range(ctx: &mut Ctx, n: &Node) -> Res {
    let (st, li, de) = (n.req(0)?, n.req(1)?, n.req(2)?);
    let known = |ctx: &Ctx, x: &str| ctx.static_dims(x).is_ok() || ctx.try_static(x).is_some();
    if ![st, li, de].iter().all(|x| known(ctx, x)) {
        return range_at_run_time(ctx, n);
    }
    let dtype = ctx.get(st)?.dtype();
    // Integer ranges may have symbolic ends; float ranges need known values.
    let count = if dtype.is_int() {
        let (a, b, d) = (
            ctx.static_dims(st)?,
            ctx.static_dims(li)?,
            ctx.static_ints(de)?,
        );
        let (a, b, d) = (
            a.first().cloned().ok_or("empty start")?,
            b.first().cloned().ok_or("empty limit")?,
            *d.first().ok_or("empty delta")?,
        );
        if d == 0 {
            return Err("delta is 0".into());
        }
        let span = b.sub(&a)?;
        match span.as_const() {
            Some(c) => Dim::Const(((c as f64 / d as f64).ceil() as i64).max(0)),
            None if d == 1 => span,
            None if d > 0 => span
                .add(&Dim::Const(d - 1))
                .and_then(|x| x.floor_div(&Dim::Const(d)))?,
            None => return Err("a symbolic range with a negative step is not supported".into()),
        }
    } else {
        let (a, b, d) = (
            ctx.static_tensor(st)?,
            ctx.static_tensor(li)?,
            ctx.static_tensor(de)?,
        );
        let first = |t: &ir::Tensor, what: &str| {
            t.to_f64_vec()
                .first()
                .copied()
                .ok_or_else(|| format!("Range {what} is empty"))
        };
        let (a, b, d) = (
            first(&a, "start")?,
            first(&b, "limit")?,
            first(&d, "delta")?,
        );
        Dim::Const(((b - a) / d).ceil().max(0.0) as i64)
    };
    let b = &mut ctx.b;
    let i = b.op1(
        Op::Iota {
            axis: 0,
            ty: ir::TensorType::new(dtype, Shape::new(vec![count])),
        },
        &[],
    )?;
    let start = ctx.ir(st)?;
    let delta = ctx.ir(de)?;
    let b = &mut ctx.b;
    let start = b.reshape(start, Shape::scalar())?;
    let delta = b.reshape(delta, Shape::scalar())?;
    let scaled = b.mul(i, delta)?;
    let y = b.add(scaled, start)?;
    one(ctx, y)
}

pub fn one_hot(ctx: &mut Ctx, n: &Node) -> Res {
    let idx = ctx.ir(n.req(0)?)?;
    let depth = ctx
        .static_tensor(n.req(1)?)?
        .to_f64_vec()
        .first()
        .copied()
        .ok_or("empty depth")? as i64;
    let values = ctx.ir(n.req(2)?)?;
    let b = &mut ctx.b;
    let r = b.rank(idx) + 1;
    let a = axis(n.int_or("axis", -1)?, r)?;
    let idx = b.cast(idx, DType::I64)?;
    let d = b.scalar(depth as f64, DType::I64)?;
    let zero = b.scalar(0.0, DType::I64)?;
    let idx_shape = b.shape(idx).clone();
    let zero = b.broadcast_to(zero, &idx_shape)?;
    let neg = b.op1(Op::Lt, &[idx, zero])?;
    let wrapped = b.add(idx, d)?;
    let idx = b.op1(Op::Select, &[neg, wrapped, idx])?;
    let mut out = b.shape(idx).dims().to_vec();
    out.insert(a, Dim::Const(depth));
    let out = Shape::new(out);
    let pos = b.op1(
        Op::Iota {
            axis: a as i64,
            ty: ir::TensorType::new(DType::I64, out.clone()),
        },
        &[],
    )?;
    let dims: Vec<i64> = (0..r as i64).filter(|&i| i != a as i64).collect();
    let idx_b = b.op1(
        Op::Broadcast {
            dims,
            shape: out.clone(),
        },
        &[idx],
    )?;
    let hit = b.op1(Op::Eq, &[pos, idx_b])?;
    let off = b.op1(
        Op::Slice {
            start: vec![Dim::Const(0)],
            limit: vec![Dim::Const(1)],
            stride: vec![1],
        },
        &[values],
    )?;
    let on = b.op1(
        Op::Slice {
            start: vec![Dim::Const(1)],
            limit: vec![Dim::Const(2)],
            stride: vec![1],
        },
        &[values],
    )?;
    let off = b.reshape(off, Shape::scalar())?;
    let on = b.reshape(on, Shape::scalar())?;
    let y = b.select(hit, on, off)?;
    one(ctx, y)
}

/// A bool mask over the last two axes of `shape`: col - row compared with k.
fn band(ctx: &mut Ctx, shape: &Shape, k: i64, upper: bool) -> Result<Value, OpError> {
    let b = &mut ctx.b;
    let r = shape.rank();
    let ty = ir::TensorType::new(DType::I64, shape.clone());
    let row = b.op1(
        Op::Iota {
            axis: r as i64 - 2,
            ty: ty.clone(),
        },
        &[],
    )?;
    let col = b.op1(
        Op::Iota {
            axis: r as i64 - 1,
            ty,
        },
        &[],
    )?;
    let diff = b.sub(col, row)?;
    let k = b.scalar(k as f64, DType::I64)?;
    let k = b.broadcast_to(k, shape)?;
    b.op1(if upper { Op::Ge } else { Op::Le }, &[diff, k])
        .map_err(s)
}

pub fn trilu(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let k = match n.input(1) {
        Some(k) => *ctx.static_ints(k)?.first().ok_or("empty k")?,
        None => 0,
    };
    let shape = ctx.b.shape(x).clone();
    if shape.rank() < 2 {
        return Err("Trilu needs rank at least 2".into());
    }
    let mask = band(ctx, &shape, k, n.int_or("upper", 1)? != 0)?;
    let zero = ctx.b.scalar_like(0.0, x)?;
    let y = ctx.b.op1(Op::Select, &[mask, x, zero])?;
    one(ctx, y)
}

pub fn eye_like(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let shape = ctx.b.shape(x).clone();
    if shape.rank() != 2 {
        return Err("EyeLike needs a rank-2 input".into());
    }
    let dtype = match n.int("dtype")? {
        Some(t) => crate::onnx::tensor::require_dtype(t as i32)?,
        None => ctx.b.dtype(x),
    };
    let k = n.int_or("k", 0)?;
    let ge = band(ctx, &shape, k, true)?;
    let le = band(ctx, &shape, k, false)?;
    let eq = ctx.b.op1(Op::And, &[ge, le])?;
    let y = ctx.b.cast(eq, dtype)?;
    one(ctx, y)
}

/// CumSum/CumProd as a window reduction over the whole axis.
pub fn cumulative(ctx: &mut Ctx, n: &Node) -> Res {
    let mut x = ctx.ir(n.req(0)?)?;
    let r = ctx.b.rank(x);
    let a = axis(*ctx.static_ints(n.req(1)?)?.first().ok_or("empty axis")?, r)?;
    let len = ctx
        .b
        .shape(x)
        .dim(a)
        .as_const()
        .ok_or("a cumulative op over a symbolic axis is not supported")?;
    let (exclusive, reverse) = (n.int_or("exclusive", 0)? != 0, n.int_or("reverse", 0)? != 0);
    let kind = if n.op() == "CumProd" {
        ReduceKind::Prod
    } else {
        ReduceKind::Sum
    };
    let reverse_axis = |b: &mut ir::Builder, v: Value| -> Result<Value, OpError> {
        let dims = b.shape(v).dims().to_vec();
        let mut st = vec![Dim::Const(0); r];
        let mut lim = dims.clone();
        let mut stride = vec![1; r];
        st[a] = Dim::Const(len - 1);
        lim[a] = Dim::Const(-1);
        stride[a] = -1;
        b.op1(
            Op::Slice {
                start: st,
                limit: lim,
                stride,
            },
            &[v],
        )
        .map_err(s)
    };
    if reverse {
        x = reverse_axis(&mut ctx.b, x)?;
    }
    let mut window = vec![1; r];
    window[a] = len.max(1);
    let mut pad_low = vec![0; r];
    pad_low[a] = (len - 1).max(0);
    let op = Op::ReduceWindow {
        kind,
        window,
        stride: vec![1; r],
        dilation: vec![1; r],
        pad_low,
        pad_high: vec![0; r],
    };
    let mut y = ctx.b.op1(op, &[x])?;
    if exclusive {
        let identity = ctx.b.scalar(
            if kind == ReduceKind::Prod { 1.0 } else { 0.0 },
            ctx.b.dtype(y),
        )?;
        let mut low = vec![0; r];
        let mut high = vec![0; r];
        low[a] = 1;
        high[a] = -1;
        y = ctx.b.op1(
            Op::Pad {
                low,
                high,
                mode: PadMode::Constant,
            },
            &[y, identity],
        )?;
    }
    if reverse {
        y = reverse_axis(&mut ctx.b, y)?;
    }
    one(ctx, y)
}

pub fn depth_to_space(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let bs = n.int("blocksize")?.ok_or("missing attribute `blocksize`")?;
    let d = ctx.b.shape(x).dims().to_vec();
    if d.len() != 4 {
        return Err("DepthToSpace needs rank 4".into());
    }
    let b = Dim::Const(bs);
    let c = d[1].floor_div(&Dim::Const(bs * bs))?;
    let crd = n.string_or("mode", "DCR")? == "CRD";
    let (inter, perm) = if crd {
        (
            vec![
                d[0].clone(),
                c.clone(),
                b.clone(),
                b.clone(),
                d[2].clone(),
                d[3].clone(),
            ],
            [0, 1, 4, 2, 5, 3],
        )
    } else {
        (
            vec![
                d[0].clone(),
                b.clone(),
                b.clone(),
                c.clone(),
                d[2].clone(),
                d[3].clone(),
            ],
            [0, 3, 4, 1, 5, 2],
        )
    };
    let y = ctx.b.reshape(x, Shape::new(inter))?;
    let y = ctx.b.transpose(y, &perm)?;
    let out = vec![d[0].clone(), c, d[2].mul(&b)?, d[3].mul(&b)?];
    let y = ctx.b.reshape(y, Shape::new(out))?;
    one(ctx, y)
}

pub fn space_to_depth(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let bs = n.int("blocksize")?.ok_or("missing attribute `blocksize`")?;
    let d = ctx.b.shape(x).dims().to_vec();
    if d.len() != 4 {
        return Err("SpaceToDepth needs rank 4".into());
    }
    let b = Dim::Const(bs);
    let (h, w) = (d[2].floor_div(&b)?, d[3].floor_div(&b)?);
    let inter = vec![
        d[0].clone(),
        d[1].clone(),
        h.clone(),
        b.clone(),
        w.clone(),
        b.clone(),
    ];
    let y = ctx.b.reshape(x, Shape::new(inter))?;
    let y = ctx.b.transpose(y, &[0, 3, 5, 1, 2, 4])?;
    let out = vec![d[0].clone(), d[1].mul(&Dim::Const(bs * bs))?, h, w];
    let y = ctx.b.reshape(y, Shape::new(out))?;
    one(ctx, y)
}
