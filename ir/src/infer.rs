//! Type rules: the result types of each op from its operand types and attributes. The op table
//! names one rule per op; the verifier, the builder and (later) the e-graph analysis all call
//! them through `Op::infer`, so there is exactly one implementation of typing.

use crate::attr::{ConstValue, PadMode, ReduceKind, ScatterReduction};
use crate::dim::{Dim, DimError};
use crate::dtype::{DType, DTypeSet};
use crate::region::Region;
use crate::shape::{Shape, TensorType};

mod quant;
pub(crate) use quant::*;

pub(crate) type Rule = Result<Vec<TensorType>, String>;

fn dim_err(e: DimError) -> String {
    e.to_string()
}

fn check_dtype(set: DTypeSet, t: &TensorType, what: &str) -> Result<(), String> {
    if set.contains(t.dtype) {
        Ok(())
    } else {
        Err(format!(
            "{what} has dtype {}, expected {}",
            t.dtype,
            set.describe()
        ))
    }
}

fn check_same(inputs: &[TensorType]) -> Result<(), String> {
    for (i, t) in inputs.iter().enumerate().skip(1) {
        if *t != inputs[0] {
            return Err(format!(
                "operand {i} has type {t} but operand 0 has type {}",
                inputs[0]
            ));
        }
    }
    Ok(())
}

fn axis(a: i64, rank: usize, what: &str) -> Result<usize, String> {
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| format!("{what} {a} is out of range for rank {rank}"))
}

fn check_len<T>(v: &[T], rank: usize, what: &str) -> Result<(), String> {
    if v.len() == rank {
        Ok(())
    } else {
        Err(format!("`{what}` has {} entries, expected {rank}", v.len()))
    }
}

/// Rejects negative extents and element counts that overflow.
pub(crate) fn check_result_type(t: &TensorType) -> Result<(), String> {
    for d in t.shape.dims() {
        if let Some(c) = d.as_const() {
            if c < 0 {
                return Err(format!("result type {t} has a negative dimension"));
            }
        }
    }
    let numel = t
        .shape
        .numel()
        .map_err(|_| format!("the element count of {t} overflows i64"))?;
    if let Some(n) = numel.as_const() {
        if t.dtype.storage_bytes(n.unsigned_abs()).is_none() {
            return Err(format!("the byte size of {t} overflows"));
        }
    }
    Ok(())
}

pub(crate) fn unary(set: DTypeSet) -> impl Fn(&[TensorType]) -> Rule {
    move |ins| {
        check_dtype(set, &ins[0], "operand")?;
        Ok(vec![ins[0].clone()])
    }
}

pub(crate) fn predicate(set: DTypeSet) -> impl Fn(&[TensorType]) -> Rule {
    move |ins| {
        check_dtype(set, &ins[0], "operand")?;
        Ok(vec![TensorType::new(DType::Bool, ins[0].shape.clone())])
    }
}

pub(crate) fn binary(set: DTypeSet) -> impl Fn(&[TensorType]) -> Rule {
    move |ins| {
        check_same(ins)?;
        check_dtype(set, &ins[0], "operand")?;
        Ok(vec![ins[0].clone()])
    }
}

pub(crate) fn compare(set: DTypeSet) -> impl Fn(&[TensorType]) -> Rule {
    move |ins| {
        check_same(ins)?;
        check_dtype(set, &ins[0], "operand")?;
        Ok(vec![TensorType::new(DType::Bool, ins[0].shape.clone())])
    }
}

pub(crate) fn rule_select(ins: &[TensorType]) -> Rule {
    if ins[0].dtype != DType::Bool {
        return Err(format!(
            "condition has dtype {}, expected bool",
            ins[0].dtype
        ));
    }
    check_same(&ins[1..])?;
    if ins[0].shape != ins[1].shape {
        return Err(format!(
            "condition has shape {} but the operands have shape {}",
            ins[0].shape, ins[1].shape
        ));
    }
    Ok(vec![ins[1].clone()])
}

pub(crate) fn rule_cast(ins: &[TensorType], dtype: &DType, _saturate: &bool) -> Rule {
    Ok(vec![TensorType::new(*dtype, ins[0].shape.clone())])
}

pub(crate) fn rule_bitcast(ins: &[TensorType], dtype: &DType) -> Rule {
    let from = ins[0].dtype;
    if from.bits() != dtype.bits() {
        return Err(format!(
            "bitcast needs equal bit widths: {from} has {}, {dtype} has {}",
            from.bits(),
            dtype.bits()
        ));
    }
    Ok(vec![TensorType::new(*dtype, ins[0].shape.clone())])
}

pub(crate) fn rule_param(_: &[TensorType], name: &str, ty: &TensorType) -> Rule {
    if name.is_empty() {
        return Err("a parameter needs a non-empty name".into());
    }
    Ok(vec![ty.clone()])
}

pub(crate) fn rule_constant(_: &[TensorType], value: &ConstValue) -> Rule {
    Ok(vec![value.tensor.ty()])
}

pub(crate) fn rule_iota(_: &[TensorType], ax: &i64, ty: &TensorType) -> Rule {
    check_dtype(DTypeSet::NUM, ty, "result")?;
    axis(*ax, ty.rank(), "axis")?;
    Ok(vec![ty.clone()])
}

pub(crate) fn rule_dims(_: &[TensorType], values: &[Dim]) -> Rule {
    Ok(vec![TensorType::new(
        DType::I64,
        Shape::from_usizes(&[values.len()]),
    )])
}

pub(crate) fn rule_reshape(ins: &[TensorType], shape: &Shape) -> Rule {
    let a = ins[0].shape.numel().map_err(dim_err)?;
    let b = shape.numel().map_err(dim_err)?;
    if a != b {
        return Err(format!(
            "cannot reshape {} to {shape}: element counts {a} and {b} differ",
            ins[0].shape
        ));
    }
    Ok(vec![TensorType::new(ins[0].dtype, shape.clone())])
}

pub(crate) fn rule_refine(ins: &[TensorType], shape: &Shape) -> Rule {
    let have = &ins[0].shape;
    if have.rank() != shape.rank() {
        return Err(format!("cannot refine {have} to {shape}: the ranks differ"));
    }
    for (a, (x, y)) in have.dims().iter().zip(shape.dims()).enumerate() {
        if let (Some(p), Some(q)) = (x.as_const(), y.as_const()) {
            if p != q {
                return Err(format!(
                    "axis {a} has size {p}, where the graph needs {q} (refined from {have} to {shape})"
                ));
            }
        }
    }
    Ok(vec![TensorType::new(ins[0].dtype, shape.clone())])
}

pub(crate) fn rule_transpose(ins: &[TensorType], perm: &[i64]) -> Rule {
    let rank = ins[0].rank();
    check_len(perm, rank, "perm")?;
    let mut seen = vec![false; rank];
    let mut dims = Vec::with_capacity(rank);
    for &p in perm {
        let a = axis(p, rank, "perm entry")?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("perm {perm:?} repeats axis {a}"));
        }
        dims.push(ins[0].shape.dim(a).clone());
    }
    Ok(vec![TensorType::new(ins[0].dtype, Shape::new(dims))])
}

pub(crate) fn rule_broadcast(ins: &[TensorType], dims: &[i64], shape: &Shape) -> Rule {
    let x = &ins[0];
    check_len(dims, x.rank(), "dims")?;
    let mut prev: Option<usize> = None;
    for (i, &d) in dims.iter().enumerate() {
        let d = axis(d, shape.rank(), "dims entry")?;
        if prev.is_some_and(|p| p >= d) {
            return Err(format!("dims {dims:?} must be strictly increasing"));
        }
        prev = Some(d);
        let (from, to) = (x.shape.dim(i), shape.dim(d));
        if from != to && *from != Dim::Const(1) {
            return Err(format!(
                "operand axis {i} of size {from} cannot broadcast to size {to}"
            ));
        }
    }
    Ok(vec![TensorType::new(x.dtype, shape.clone())])
}

/// Fails when `d` is a negative constant; symbolic values are trusted here and checked when
/// the interpreter binds them.
fn nonneg(d: &Dim, what: impl FnOnce() -> String) -> Result<(), String> {
    match d.as_const() {
        Some(c) if c < 0 => Err(what()),
        _ => Ok(()),
    }
}

pub(crate) fn rule_slice(ins: &[TensorType], start: &[Dim], limit: &[Dim], stride: &[i64]) -> Rule {
    let x = &ins[0];
    let rank = x.rank();
    check_len(start, rank, "start")?;
    check_len(limit, rank, "limit")?;
    check_len(stride, rank, "stride")?;
    let mut dims = Vec::with_capacity(rank);
    for a in 0..rank {
        let (s, l, st, d) = (&start[a], &limit[a], stride[a], x.shape.dim(a));
        let bad = || format!("slice {s}..{l} by {st} is out of bounds for axis {a} of size {d}");
        let (span, step) = if st > 0 {
            nonneg(s, bad)?;
            nonneg(&d.sub(l).map_err(dim_err)?, bad)?;
            (l.sub(s).map_err(dim_err)?, st)
        } else if st < 0 {
            nonneg(&l.add(&Dim::Const(1)).map_err(dim_err)?, bad)?;
            nonneg(
                &d.sub(s)
                    .map_err(dim_err)?
                    .sub(&Dim::Const(1))
                    .map_err(dim_err)?,
                bad,
            )?;
            (
                s.sub(l).map_err(dim_err)?,
                st.checked_neg().ok_or("stride overflows")?,
            )
        } else {
            return Err(format!("stride of axis {a} is zero"));
        };
        nonneg(&span, bad)?;
        let n = span
            .add(&Dim::Const(step - 1))
            .and_then(|x| x.floor_div(&Dim::Const(step)))
            .map_err(dim_err)?;
        dims.push(n);
    }
    Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
}

pub(crate) fn rule_pad(ins: &[TensorType], low: &[i64], high: &[i64], mode: &PadMode) -> Rule {
    let x = &ins[0];
    if ins[1] != TensorType::new(x.dtype, Shape::scalar()) {
        return Err(format!(
            "padding value has type {}, expected {}[]",
            ins[1], x.dtype
        ));
    }
    check_len(low, x.rank(), "low")?;
    check_len(high, x.rank(), "high")?;
    let mut dims = Vec::with_capacity(x.rank());
    for (a, d) in x.shape.dims().iter().enumerate() {
        let (lo, hi) = (low[a], high[a]);
        if *mode != PadMode::Constant {
            if lo < 0 || hi < 0 {
                return Err(format!("{mode} padding cannot crop (axis {a})"));
            }
            if let Some(c) = d.as_const() {
                let max = if *mode == PadMode::Reflect { c - 1 } else { c };
                if (lo > 0 || hi > 0) && (lo > max || hi > max) {
                    return Err(format!(
                        "{mode} padding of {lo}/{hi} does not fit axis {a} of size {c}"
                    ));
                }
            }
        }
        let total = lo.checked_add(hi).ok_or("padding overflows i64")?;
        let n = d.add(&Dim::Const(total)).map_err(dim_err)?;
        nonneg(&n, || format!("padding crops axis {a} below zero"))?;
        dims.push(n);
    }
    Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
}

pub(crate) fn rule_concat(ins: &[TensorType], ax: &i64) -> Rule {
    let first = &ins[0];
    let a = axis(*ax, first.rank(), "axis")?;
    let mut total = Dim::Const(0);
    for (i, t) in ins.iter().enumerate() {
        let same_rest = t.dtype == first.dtype
            && t.rank() == first.rank()
            && (0..t.rank()).all(|j| j == a || t.shape.dim(j) == first.shape.dim(j));
        if !same_rest {
            return Err(format!(
                "operand {i} has type {t}, which does not match operand 0 ({first}) off axis {a}"
            ));
        }
        total = total.add(t.shape.dim(a)).map_err(dim_err)?;
    }
    let mut dims = first.shape.dims().to_vec();
    dims[a] = total;
    Ok(vec![TensorType::new(first.dtype, Shape::new(dims))])
}

pub(crate) fn rule_gather(ins: &[TensorType], ax: &i64) -> Rule {
    let (data, idx) = (&ins[0], &ins[1]);
    check_dtype(DTypeSet::INT, idx, "indices")?;
    let a = axis(*ax, data.rank(), "axis")?;
    let mut dims = data.shape.dims()[..a].to_vec();
    dims.extend_from_slice(idx.shape.dims());
    dims.extend_from_slice(&data.shape.dims()[a + 1..]);
    Ok(vec![TensorType::new(data.dtype, Shape::new(dims))])
}

/// The length of the index tuples of gather_nd/scatter_nd: the last axis of the indices.
fn index_depth(idx: &TensorType, room: usize) -> Result<usize, String> {
    check_dtype(DTypeSet::INT, idx, "indices")?;
    let last = idx
        .shape
        .dims()
        .last()
        .ok_or("indices must have rank at least 1")?;
    let m = last
        .as_const()
        .ok_or("the last axis of the indices must have a static size")?;
    usize::try_from(m)
        .ok()
        .filter(|&m| m >= 1 && m <= room)
        .ok_or_else(|| format!("index tuples of length {m} do not fit {room} addressable axes"))
}

pub(crate) fn rule_gather_nd(ins: &[TensorType], batch_dims: &i64) -> Rule {
    let (data, idx) = (&ins[0], &ins[1]);
    let b = usize::try_from(*batch_dims)
        .ok()
        .filter(|&b| b < data.rank().min(idx.rank()))
        .ok_or_else(|| format!("batch_dims {batch_dims} is out of range"))?;
    if data.shape.dims()[..b] != idx.shape.dims()[..b] {
        return Err(format!(
            "batch axes differ between data {} and indices {}",
            data.shape, idx.shape
        ));
    }
    let m = index_depth(idx, data.rank() - b)?;
    let mut dims = idx.shape.dims()[..idx.rank() - 1].to_vec();
    dims.extend_from_slice(&data.shape.dims()[b + m..]);
    Ok(vec![TensorType::new(data.dtype, Shape::new(dims))])
}

pub(crate) fn rule_scatter_nd(ins: &[TensorType], reduction: &ScatterReduction) -> Rule {
    let (data, idx, upd) = (&ins[0], &ins[1], &ins[2]);
    let m = index_depth(idx, data.rank())?;
    let mut expect = idx.shape.dims()[..idx.rank() - 1].to_vec();
    expect.extend_from_slice(&data.shape.dims()[m..]);
    let expect = TensorType::new(data.dtype, Shape::new(expect));
    if *upd != expect {
        return Err(format!("updates have type {upd}, expected {expect}"));
    }
    if *reduction != ScatterReduction::None {
        check_dtype(DTypeSet::NUM, data, "data")?;
    }
    Ok(vec![data.clone()])
}

fn check_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out: Vec<usize> = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = axis(a, rank, "axis")?;
        if out.last().is_some_and(|&p| p >= a) {
            return Err(format!("axes {axes:?} must be strictly increasing"));
        }
        out.push(a);
    }
    Ok(out)
}

pub(crate) fn reduce(set: DTypeSet) -> impl Fn(&[TensorType], &[i64]) -> Rule {
    move |ins, axes| {
        let x = &ins[0];
        check_dtype(set, x, "operand")?;
        let axes = check_axes(axes, x.rank())?;
        let dims = (0..x.rank())
            .filter(|a| !axes.contains(a))
            .map(|a| x.shape.dim(a).clone())
            .collect();
        Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
    }
}

pub(crate) fn rule_arg_reduce(ins: &[TensorType], ax: &i64, _last: &bool) -> Rule {
    let x = &ins[0];
    check_dtype(DTypeSet::NUM, x, "operand")?;
    let a = axis(*ax, x.rank(), "axis")?;
    if x.shape.dim(a).as_const() == Some(0) {
        return Err(format!("axis {a} is empty"));
    }
    let mut dims = x.shape.dims().to_vec();
    dims.remove(a);
    Ok(vec![TensorType::new(DType::I64, Shape::new(dims))])
}

pub(crate) fn rule_dot(
    ins: &[TensorType],
    lhs_batch: &[i64],
    rhs_batch: &[i64],
    lhs_contract: &[i64],
    rhs_contract: &[i64],
) -> Rule {
    let (l, r) = (&ins[0], &ins[1]);
    check_same_dtype(l, r)?;
    check_dtype(DTypeSet::NUM, l, "lhs")?;
    if lhs_batch.len() != rhs_batch.len() || lhs_contract.len() != rhs_contract.len() {
        return Err("lhs and rhs must name as many batch and contracting axes".into());
    }
    let used =
        |side: &TensorType, b: &[i64], c: &[i64], name: &str| -> Result<Vec<usize>, String> {
            let mut seen = vec![false; side.rank()];
            let mut out = Vec::new();
            for &a in b.iter().chain(c) {
                let a = axis(a, side.rank(), &format!("{name} axis"))?;
                if std::mem::replace(&mut seen[a], true) {
                    return Err(format!("{name} axis {a} is used twice"));
                }
                out.push(a);
            }
            Ok(out)
        };
    let lu = used(l, lhs_batch, lhs_contract, "lhs")?;
    let ru = used(r, rhs_batch, rhs_contract, "rhs")?;
    for (&la, &ra) in lu.iter().zip(&ru) {
        if l.shape.dim(la) != r.shape.dim(ra) {
            return Err(format!(
                "lhs axis {la} (size {}) does not match rhs axis {ra} (size {})",
                l.shape.dim(la),
                r.shape.dim(ra)
            ));
        }
    }
    let mut dims: Vec<Dim> = lu[..lhs_batch.len()]
        .iter()
        .map(|&a| l.shape.dim(a).clone())
        .collect();
    dims.extend(
        (0..l.rank())
            .filter(|a| !lu.contains(a))
            .map(|a| l.shape.dim(a).clone()),
    );
    dims.extend(
        (0..r.rank())
            .filter(|a| !ru.contains(a))
            .map(|a| r.shape.dim(a).clone()),
    );
    Ok(vec![TensorType::new(l.dtype, Shape::new(dims))])
}

fn check_same_dtype(l: &TensorType, r: &TensorType) -> Result<(), String> {
    if l.dtype == r.dtype {
        Ok(())
    } else {
        Err(format!(
            "operand dtypes differ: {} and {}",
            l.dtype, r.dtype
        ))
    }
}

/// Output extent of a window over one axis: floor((n + pads - dilated window) / stride) + 1.
fn window_extent(
    n: &Dim,
    k: &Dim,
    stride: i64,
    dilation: i64,
    lo: i64,
    hi: i64,
    a: usize,
) -> Result<Dim, String> {
    if stride < 1 || dilation < 1 {
        return Err(format!(
            "stride and dilation of axis {a} must be at least 1"
        ));
    }
    if lo < 0 || hi < 0 {
        return Err(format!("padding of axis {a} must not be negative"));
    }
    let one = Dim::Const(1);
    let span = k
        .sub(&one)
        .and_then(|x| x.mul(&Dim::Const(dilation)))
        .and_then(|x| x.add(&one))
        .map_err(dim_err)?;
    let room = n
        .add(&Dim::Const(lo))
        .and_then(|x| x.add(&Dim::Const(hi)))
        .and_then(|x| x.sub(&span))
        .map_err(dim_err)?;
    nonneg(&room, || {
        format!("window of extent {span} does not fit axis {a} of size {n} padded by {lo}+{hi}")
    })?;
    room.floor_div(&Dim::Const(stride))
        .and_then(|x| x.add(&one))
        .map_err(dim_err)
}

pub(crate) fn rule_conv(
    ins: &[TensorType],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
    pad_high: &[i64],
    groups: &i64,
) -> Rule {
    let (x, w) = (&ins[0], &ins[1]);
    check_same_dtype(x, w)?;
    check_dtype(DTypeSet::NUM, x, "input")?;
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(format!(
            "conv needs input [N, C, spatial...] and weight [O, C/groups, kernel...] of equal rank \
             at least 3, got {} and {}",
            x.shape, w.shape
        ));
    }
    let sp = x.rank() - 2;
    for (v, n) in [
        (stride, "stride"),
        (dilation, "dilation"),
        (pad_low, "pad_low"),
        (pad_high, "pad_high"),
    ] {
        check_len(v, sp, n)?;
    }
    if *groups < 1 {
        return Err(format!("groups must be at least 1, got {groups}"));
    }
    let g = Dim::Const(*groups);
    let cin = w.shape.dim(1).mul(&g).map_err(dim_err)?;
    if *x.shape.dim(1) != cin {
        return Err(format!(
            "input has {} channels but weight expects {} ({} per group x {groups} groups)",
            x.shape.dim(1),
            cin,
            w.shape.dim(1)
        ));
    }
    if let Some(o) = w.shape.dim(0).as_const() {
        if o % groups != 0 {
            return Err(format!(
                "{o} output channels do not divide into {groups} groups"
            ));
        }
    }
    let mut dims = vec![x.shape.dim(0).clone(), w.shape.dim(0).clone()];
    for i in 0..sp {
        dims.push(window_extent(
            x.shape.dim(i + 2),
            w.shape.dim(i + 2),
            stride[i],
            dilation[i],
            pad_low[i],
            pad_high[i],
            i + 2,
        )?);
    }
    Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
}

pub(crate) fn rule_conv_blocked(
    ins: &[TensorType],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
    pad_high: &[i64],
    groups: &i64,
    block: &i64,
) -> Rule {
    let (x, w) = (&ins[0], &ins[1]);
    if *block < 1 {
        return Err(format!("block must be at least 1, got {block}"));
    }
    let blocked = x.rank() == 5 && *x.shape.dim(4) == Dim::Const(*block);
    if !(blocked || x.rank() == 4) || w.rank() != 4 {
        return Err(format!(
            "conv_blocked needs input [N, C/{block}, H, W, {block}] or [N, C, H, W] and weight \
             [O, C/groups, kh, kw], got {} and {}",
            x.shape, w.shape
        ));
    }
    let b = Dim::Const(*block);
    let xd = x.shape.dims();
    let c = if blocked {
        // A dense conv reads the first channels of a blocked input whose last block is
        // partly padding (a layout's padded channels, which no sum reads).
        match (w.shape.dim(1).as_const(), xd[1].as_const(), *groups) {
            (Some(cw), Some(nb), 1) if cw < nb * block && cw > (nb - 1) * block => Dim::Const(cw),
            _ => xd[1].mul(&b).map_err(dim_err)?,
        }
    } else {
        xd[1].clone()
    };
    let plain = |s: Vec<Dim>| TensorType::new(x.dtype, Shape::new(s));
    let nchw = plain(vec![xd[0].clone(), c, xd[2].clone(), xd[3].clone()]);
    let out = rule_conv(
        &[nchw, w.clone()],
        stride,
        dilation,
        pad_low,
        pad_high,
        groups,
    )?;
    let od = out[0].shape.dims();
    let Some(ob) = od[1].exact_div(&b) else {
        return Err(format!(
            "{} output channels are not a multiple of the block {block}",
            od[1]
        ));
    };
    Ok(vec![plain(vec![
        od[0].clone(),
        ob,
        od[2].clone(),
        od[3].clone(),
        b,
    ])])
}

pub(crate) fn rule_resample(ins: &[TensorType], ax: &i64) -> Rule {
    let (x, idx, w) = (&ins[0], &ins[1], &ins[2]);
    check_dtype(DTypeSet::FLOAT, x, "operand")?;
    if idx.dtype != DType::I64 {
        return Err(format!("indices must be i64, got {}", idx.dtype));
    }
    if idx.rank() != 2 || idx.shape.dim(1).as_const().is_none() {
        return Err(format!(
            "indices must be [out, taps] with a static tap count, got {}",
            idx.shape
        ));
    }
    if w.dtype != x.dtype || w.shape != idx.shape {
        return Err(format!(
            "weights {} must be {}{} like the indices",
            w, x.dtype, idx.shape
        ));
    }
    let a = axis(*ax, x.rank(), "axis")?;
    let mut dims = x.shape.dims().to_vec();
    dims[a] = idx.shape.dim(0).clone();
    Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
}

pub(crate) fn rule_reduce_window(
    ins: &[TensorType],
    _kind: &ReduceKind,
    window: &[i64],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
    pad_high: &[i64],
) -> Rule {
    let x = &ins[0];
    check_dtype(DTypeSet::NUM, x, "operand")?;
    let rank = x.rank();
    for (v, n) in [
        (window, "window"),
        (stride, "stride"),
        (dilation, "dilation"),
        (pad_low, "pad_low"),
        (pad_high, "pad_high"),
    ] {
        check_len(v, rank, n)?;
    }
    let mut dims = Vec::with_capacity(rank);
    for a in 0..rank {
        if window[a] < 1 {
            return Err(format!("window of axis {a} must be at least 1"));
        }
        dims.push(window_extent(
            x.shape.dim(a),
            &Dim::Const(window[a]),
            stride[a],
            dilation[a],
            pad_low[a],
            pad_high[a],
            a,
        )?);
    }
    Ok(vec![TensorType::new(x.dtype, Shape::new(dims))])
}

pub(crate) fn rule_dynamic_quantize(ins: &[TensorType]) -> Rule {
    let x = &ins[0];
    if x.dtype != DType::F32 {
        return Err(format!("x must be f32, got {}", x.dtype));
    }
    Ok(vec![
        TensorType::new(DType::U8, x.shape.clone()),
        TensorType::new(DType::F32, Shape::new(Vec::new())),
        TensorType::new(DType::U8, Shape::new(Vec::new())),
    ])
}

pub(crate) fn rule_topk(ins: &[TensorType], k: &i64, ax: &i64, _largest: &bool) -> Rule {
    let x = &ins[0];
    check_dtype(DTypeSet::NUM, x, "operand")?;
    let a = axis(*ax, x.rank(), "axis")?;
    if *k < 0 {
        return Err(format!("k must not be negative, got {k}"));
    }
    if let Some(n) = x.shape.dim(a).as_const() {
        if *k > n {
            return Err(format!("k = {k} exceeds the {n} elements of axis {a}"));
        }
    }
    let mut dims = x.shape.dims().to_vec();
    dims[a] = Dim::Const(*k);
    let shape = Shape::new(dims);
    Ok(vec![
        TensorType::new(x.dtype, shape.clone()),
        TensorType::new(DType::I64, shape),
    ])
}

pub(crate) fn rule_tree_walk(ins: &[TensorType]) -> Rule {
    let x = &ins[0];
    check_dtype(DTypeSet::FLOAT, x, "x")?;
    if x.rank() != 2 {
        return Err(format!("x must be [rows, features], got {}", x.shape));
    }
    let n = ins[1].shape.dims().first().cloned();
    let tables = [
        ("feature", DType::I64),
        ("threshold", x.dtype),
        ("rule", DType::I64),
        ("yes", DType::I64),
        ("no", DType::I64),
        ("nan_yes", DType::Bool),
    ];
    for (t, (what, dtype)) in ins[1..7].iter().zip(tables) {
        if t.dtype != dtype || t.rank() != 1 || t.shape.dims().first() != n.as_ref() {
            return Err(format!(
                "the {what} table must be {dtype}[{}], got {t}",
                ins[1]
                    .shape
                    .dims()
                    .first()
                    .map_or("nodes".into(), |d| d.to_string())
            ));
        }
    }
    let roots = &ins[7];
    if roots.dtype != DType::I64 || roots.rank() != 1 {
        return Err(format!("roots must be i64[trees], got {roots}"));
    }
    let shape = Shape::new(vec![x.shape.dim(0).clone(), roots.shape.dim(0).clone()]);
    Ok(vec![TensorType::new(DType::I64, shape)])
}

pub(crate) fn rule_lstm(ins: &[TensorType], _reverse: &bool) -> Rule {
    let (y, state) = recurrent(ins, 4, &["xw", "rt", "h0", "c0"])?;
    for (t, what) in ins[2..].iter().zip(["h0", "c0"]) {
        if t.shape != state.shape {
            return Err(format!("{what} must be {}, got {}", state.shape, t.shape));
        }
    }
    Ok(vec![y, state.clone(), state])
}

pub(crate) fn rule_gru(ins: &[TensorType], _reverse: &bool, _linear: &bool) -> Rule {
    let (y, state) = recurrent(ins, 3, &["xw", "rt", "rbn", "h0"])?;
    let hidden = ins[1].shape.dim(0);
    if ins[2].shape.dims() != std::slice::from_ref(hidden) {
        return Err(format!("rbn must be [{hidden}], got {}", ins[2].shape));
    }
    if ins[3].shape != state.shape {
        return Err(format!("h0 must be {}, got {}", state.shape, ins[3].shape));
    }
    Ok(vec![y, state])
}

pub(crate) fn rule_rnn(ins: &[TensorType], _reverse: &bool) -> Rule {
    let (y, state) = recurrent(ins, 1, &["xw", "rt", "h0"])?;
    if ins[2].shape != state.shape {
        return Err(format!("h0 must be {}, got {}", state.shape, ins[2].shape));
    }
    Ok(vec![y, state])
}

/// A recurrent layer's every-step output and state types, from its operands (named `what`):
/// the input projection `[seq, batch, gates·hidden]` and the transposed recurrent weights
/// `[hidden, gates·hidden]`, all of one float dtype.
fn recurrent(
    ins: &[TensorType],
    gates: i64,
    what: &[&str],
) -> Result<(TensorType, TensorType), String> {
    let xw = &ins[0];
    check_dtype(DTypeSet::FLOAT, xw, "xw")?;
    for (t, what) in ins.iter().zip(what) {
        if t.dtype != xw.dtype {
            return Err(format!("{what} must be {}, got {t}", xw.dtype));
        }
    }
    if xw.rank() != 3 || ins[1].rank() != 2 {
        let want = format!("[seq, batch, {gates}·hidden] and rt [hidden, {gates}·hidden]");
        return Err(format!("xw must be {want}, got {xw} and {}", ins[1]));
    }
    let (seq, batch, cols) = (xw.shape.dim(0), xw.shape.dim(1), xw.shape.dim(2));
    let hidden = ins[1].shape.dim(0).clone();
    let all = hidden.mul(&Dim::Const(gates)).map_err(|e| e.to_string())?;
    if ins[1].shape.dim(1) != &all || cols != &all {
        return Err(format!(
            "xw [.., .., {cols}] and rt {} must both have {gates}·{hidden} gate columns",
            ins[1].shape
        ));
    }
    let state = Shape::new(vec![batch.clone(), hidden.clone()]);
    Ok((
        TensorType::new(
            xw.dtype,
            Shape::new(vec![seq.clone(), batch.clone(), hidden]),
        ),
        TensorType::new(xw.dtype, state),
    ))
}

/// The symbol a data-dependent op defines: a plain symbol.
fn defined(count: &Dim) -> Result<Dim, String> {
    match count.as_sym() {
        Some(_) => Ok(count.clone()),
        None => Err(format!(
            "count must be a symbol this node defines, not {count}"
        )),
    }
}

pub(crate) fn rule_nonzero(ins: &[TensorType], count: &Dim) -> Rule {
    let n = defined(count)?;
    let rank = Dim::Const(ins[0].rank() as i64);
    Ok(vec![TensorType::new(DType::I64, Shape::new(vec![rank, n]))])
}

pub(crate) fn rule_nms(
    ins: &[TensorType],
    _center: &bool,
    _thresholded: &bool,
    count: &Dim,
) -> Rule {
    let n = defined(count)?;
    let (boxes, scores) = (&ins[0], &ins[1]);
    check_dtype(DTypeSet::FLOAT, boxes, "boxes")?;
    check_dtype(DTypeSet::FLOAT, scores, "scores")?;
    if boxes.rank() != 3 || boxes.shape.dim(2) != &Dim::Const(4) {
        return Err(format!("boxes must be [batch, boxes, 4], got {boxes}"));
    }
    if scores.rank() != 3
        || scores.shape.dim(0) != boxes.shape.dim(0)
        || scores.shape.dim(2) != boxes.shape.dim(1)
    {
        return Err(format!(
            "scores must be [batch, classes, boxes] for boxes {boxes}, got {scores}"
        ));
    }
    for (i, what) in [
        (2, "the most boxes per class"),
        (3, "the IoU threshold"),
        (4, "the score threshold"),
    ] {
        if ins[i].rank() != 0 {
            return Err(format!("{what} must be a scalar, got {}", ins[i]));
        }
    }
    check_dtype(DTypeSet::INT, &ins[2], "the most boxes per class")?;
    check_dtype(DTypeSet::FLOAT, &ins[3], "the IoU threshold")?;
    check_dtype(DTypeSet::FLOAT, &ins[4], "the score threshold")?;
    Ok(vec![TensorType::new(
        DType::I64,
        Shape::new(vec![n, Dim::Const(3)]),
    )])
}

pub(crate) fn rule_dyn_iota(ins: &[TensorType], count: &Dim) -> Rule {
    let n = defined(count)?;
    check_dtype(DTypeSet::INT, &ins[0], "n")?;
    if ins[0].rank() != 0 {
        return Err(format!("n must be a scalar, got {}", ins[0]));
    }
    Ok(vec![TensorType::new(DType::I64, Shape::new(vec![n]))])
}

pub(crate) fn rule_dyn_topk(ins: &[TensorType], ax: &i64, _largest: &bool, count: &Dim) -> Rule {
    let n = defined(count)?;
    let x = &ins[0];
    check_dtype(DTypeSet::NUM, x, "operand")?;
    check_dtype(DTypeSet::INT, &ins[1], "k")?;
    if ins[1].rank() != 0 {
        return Err(format!("k must be a scalar, got {}", ins[1]));
    }
    let a = axis(*ax, x.rank(), "axis")?;
    let mut dims = x.shape.dims().to_vec();
    dims[a] = n;
    let shape = Shape::new(dims);
    Ok(vec![
        TensorType::new(x.dtype, shape.clone()),
        TensorType::new(DType::I64, shape),
    ])
}

pub(crate) fn rule_choose(ins: &[TensorType], shape: &Shape) -> Rule {
    let (c, a, b) = (&ins[0], &ins[1], &ins[2]);
    if c.dtype != DType::Bool || c.rank() != 0 {
        return Err(format!("the condition must be a bool scalar, got {c}"));
    }
    if a.dtype != b.dtype || a.rank() != b.rank() || a.rank() != shape.rank() {
        return Err(format!("cannot choose between {a} and {b} as {shape}"));
    }
    for (i, ((x, y), r)) in a
        .shape
        .dims()
        .iter()
        .zip(b.shape.dims())
        .zip(shape.dims())
        .enumerate()
    {
        let ok = if x == y { r == x } else { r.as_sym().is_some() };
        if !ok {
            return Err(format!(
                "axis {i} is {x} or {y}, so the result's must be {}",
                if x == y {
                    x.to_string()
                } else {
                    "a symbol this node defines".into()
                }
            ));
        }
    }
    Ok(vec![TensorType::new(a.dtype, shape.clone())])
}

pub(crate) fn rule_unique(ins: &[TensorType], ax: &[i64], _sorted: &bool, count: &Dim) -> Rule {
    let n = defined(count)?;
    let x = &ins[0];
    let (values, total) = match ax {
        [] => (
            Shape::new(vec![n.clone()]),
            x.shape.numel().map_err(dim_err)?,
        ),
        [a] => {
            let a = axis(*a, x.rank(), "axis")?;
            let mut dims = x.shape.dims().to_vec();
            let total = std::mem::replace(&mut dims[a], n.clone());
            (Shape::new(dims), total)
        }
        _ => return Err("unique takes at most one axis".into()),
    };
    let ids = |d: Dim| TensorType::new(DType::I64, Shape::new(vec![d]));
    Ok(vec![
        TensorType::new(x.dtype, values),
        ids(n.clone()),
        ids(total),
        ids(n),
    ])
}

/// A region's parameters, which must be as many as the node's operands.
fn body_params(g: &crate::Graph, operands: usize) -> Result<&[crate::NodeId], String> {
    let params = g.params();
    if params.len() != operands {
        return Err(format!(
            "the body takes {} parameters but the node has {operands} operands",
            params.len()
        ));
    }
    Ok(params)
}

pub(crate) fn rule_loop(
    inputs: &[TensorType],
    count: &Dim,
    carry: &i64,
    scan: &i64,
    _reverse: &bool,
    body: &Region,
) -> Rule {
    let g = body.graph();
    let (nc, ns) = (
        usize::try_from(*carry).map_err(|_| "carry must not be negative")?,
        usize::try_from(*scan).map_err(|_| "scan must not be negative")?,
    );
    if nc + ns > inputs.len() {
        return Err(format!(
            "{nc} carried and {ns} scanned operands, but the node has {}",
            inputs.len()
        ));
    }
    if count.as_const().is_some_and(|c| c < 0) {
        return Err(format!("count {count} is negative"));
    }
    let params = body_params(g, inputs.len())?;
    let param_ty = |i: usize| -> Result<&TensorType, String> {
        g.node(params[i])
            .types()
            .first()
            .ok_or_else(|| "a body parameter has no type".to_string())
    };
    for (i, t) in inputs.iter().enumerate() {
        let pt = param_ty(i)?;
        let want = if (nc..nc + ns).contains(&i) {
            // A sequence: its entries are what the body takes.
            if t.rank() == 0 || t.shape.dim(0) != count {
                return Err(format!(
                    "operand {i} ({t}) is scanned, so its axis 0 must have {count} entries"
                ));
            }
            TensorType::new(t.dtype, Shape::new(t.shape.dims()[1..].to_vec()))
        } else {
            t.clone()
        };
        if *pt != want {
            return Err(format!(
                "operand {i} gives the body {want} but its parameter {i} is {pt}"
            ));
        }
    }
    let outs: Vec<&TensorType> = g.outputs().iter().map(|(_, v)| g.value_type(*v)).collect();
    if outs.len() < nc {
        return Err(format!(
            "the body returns {} values but carries {nc}",
            outs.len()
        ));
    }
    let mut results = Vec::with_capacity(outs.len());
    for (i, t) in outs.iter().enumerate() {
        if i < nc {
            if *t != &inputs[i] {
                return Err(format!(
                    "carried value {i} enters as {} but the body returns {t}",
                    inputs[i]
                ));
            }
            results.push((*t).clone());
        } else {
            let mut dims = vec![count.clone()];
            dims.extend_from_slice(t.shape.dims());
            results.push(TensorType::new(t.dtype, Shape::new(dims)));
        }
    }
    Ok(results)
}

pub(crate) fn rule_fused(inputs: &[TensorType], _kind: &String, body: &Region) -> Rule {
    let g = body.graph();
    let params = body_params(g, inputs.len())?;
    for (i, (&p, t)) in params.iter().zip(inputs).enumerate() {
        let pt = g
            .node(p)
            .types()
            .first()
            .ok_or("a body parameter has no type")?;
        if pt != t {
            return Err(format!(
                "operand {i} has type {t} but the body's parameter {i} is {pt}"
            ));
        }
    }
    if g.outputs().is_empty() {
        return Err("the body returns nothing".into());
    }
    Ok(g.outputs()
        .iter()
        .map(|(_, v)| g.value_type(*v).clone())
        .collect())
}
