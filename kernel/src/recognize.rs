//! Loop shapes recognized once for every backend: reductions (`acc = max|min(acc, e)` in f32,
//! `acc = add(acc, cast<f64>(e))` for an f32 sum) and loops over contiguous f32 rows, and the
//! `row-calls` transform that hands softmax's row passes to library routines
//! ([`crate::routines::rows`]): a row's f32 maximum and its f64 sum (reductions over a
//! contiguous row, any mark; the minimum too, a dynamic quantizer's) and `dst = exp(src - s)`
//! along a row (a vector loop) become `call row_max` (`row_min`), `call row_sum_f64` and
//! `call row_exp_sub`; a row's sigmoid or tanh inside
//! a vector loop is computed first by `call row_act`. A backend's own vector code reads the
//! same [`reduction`].

use ir::{DType, Op};

use crate::loops::{Call, Expr, Kernel, Stmt, VarId};

/// Whether `e` reads a variable `f` accepts.
pub fn mentions(e: &Expr, f: &dyn Fn(VarId) -> bool) -> bool {
    match e {
        Expr::Var(w) => f(*w),
        Expr::Int(..) | Expr::Float(..) | Expr::Dim(_) => false,
        Expr::Load { index, .. } => mentions(index, f),
        Expr::Op { args, .. } => args.iter().any(|a| mentions(a, f)),
    }
}

/// Whether every variable and buffer `e` names exists (so that `Expr::dtype` is safe).
pub fn well_formed(k: &Kernel, e: &Expr) -> bool {
    match e {
        Expr::Var(w) => *w < k.vars.len(),
        Expr::Int(..) | Expr::Float(..) | Expr::Dim(_) => true,
        Expr::Load { buf, index } => *buf < k.bufs.len() && well_formed(k, index),
        Expr::Op { args, .. } => args.iter().all(|a| well_formed(k, a)),
    }
}

/// A reduction loop's body: `acc = op(acc, e)` with `e` an f32 value of the loop's iteration
/// that does not read `acc` (the f64 sum's cast taken off).
pub struct Reduction<'k> {
    pub acc: VarId,
    pub op: &'k Op,
    /// f32 for max and min, f64 for the sum.
    pub dtype: DType,
    pub e: &'k Expr,
}

/// The reduction `body` of loop `var` performs, if it is one.
pub fn reduction<'k>(k: &Kernel, var: VarId, body: &'k [Stmt]) -> Option<Reduction<'k>> {
    let [Stmt::Set {
        var: acc,
        value: Expr::Op { op, args, dtype },
    }] = body
    else {
        return None;
    };
    let (acc, dtype) = (*acc, *dtype);
    let [Expr::Var(a), e] = args.as_slice() else {
        return None;
    };
    if *a != acc || acc == var || acc >= k.vars.len() || k.vars[acc] != dtype {
        return None;
    }
    let e = match (op, dtype, e) {
        (Op::Max | Op::Min, DType::F32, e) => e,
        (
            Op::Add,
            DType::F64,
            Expr::Op {
                op: Op::Cast { .. },
                args,
                dtype: DType::F64,
            },
        ) if args.len() == 1 => &args[0],
        _ => return None,
    };
    if !well_formed(k, e) || e.dtype(k) != DType::F32 || mentions(e, &|w| w == acc) {
        return None;
    }
    Some(Reduction { acc, op, dtype, e })
}

/// `off` when `index` is `off + var` (either order, or `var` alone) and `off` does not read
/// `var`.
fn contiguous(index: &Expr, var: VarId) -> Option<Expr> {
    if *index == Expr::Var(var) {
        return Some(Expr::i64(0));
    }
    let Expr::Op {
        op: Op::Add,
        args,
        dtype: DType::I64,
    } = index
    else {
        return None;
    };
    let off = match args.as_slice() {
        [Expr::Var(v), off] | [off, Expr::Var(v)] if *v == var => off.clone(),
        // `a + (b + var)`: the offset a + b.
        [a, b] if !mentions(a, &|w| w == var) => a.clone() + contiguous(b, var)?,
        [b, a] if !mentions(a, &|w| w == var) => a.clone() + contiguous(b, var)?,
        _ => return None,
    };
    (!mentions(&off, &|w| w == var)).then_some(off)
}

/// The f32 buffer and offset of a load along the row of loop `var`.
fn row_load(k: &Kernel, e: &Expr, var: VarId) -> Option<(usize, Expr)> {
    match e {
        Expr::Load { buf, index } if k.bufs.get(*buf)?.dtype == DType::F32 => {
            Some((*buf, contiguous(index, var)?))
        }
        _ => None,
    }
}

/// A call of row routine `routine` over `n` elements.
fn call(
    routine: &str,
    operands: Vec<Option<(usize, Expr)>>,
    n: &Expr,
    scalars: Vec<Expr>,
    result: Option<VarId>,
) -> Stmt {
    Stmt::Call(Box::new(Call {
        routine: routine.into(),
        operands,
        ints: vec![n.clone()],
        scalars,
        result,
    }))
}

/// Whether `e` is one f32 value for the whole row of loop `var` that does not read `dst`
/// (which the row's call writes): a scale, a zero point, an initial value.
fn uniform(k: &Kernel, e: &Expr, var: VarId, dst: usize) -> bool {
    well_formed(k, e) && e.dtype(k) == DType::F32 && !mentions(e, &|w| w == var) && !e.loads(dst)
}

/// Rows of fewer elements than this (a constant extent) are left to the backend's loops.
const SHORT_ROW: i64 = 16;

/// Whether loop `var in 0..extent` runs along a row worth a routine call: an extent that
/// does not read `var`, and not known to be shorter than a vector (a call per row of a few
/// elements — a classifier's 3 classes — costs more than the loop it replaces).
fn a_row(extent: &Expr, var: VarId) -> bool {
    !mentions(extent, &|w| w == var) && !matches!(extent, Expr::Int(n, _) if *n < SHORT_ROW)
}

/// The routine call loop `var in 0..extent` over `body` is, if it has one of the shapes above.
fn row_call(k: &Kernel, var: VarId, extent: &Expr, body: &[Stmt], vector: bool) -> Option<Stmt> {
    if !a_row(extent, var) {
        return None;
    }
    if let Some(Reduction { acc, op, dtype, e }) = reduction(k, var, body) {
        let name = match (op, dtype) {
            (Op::Max, DType::F32) => "row_max",
            (Op::Min, DType::F32) => "row_min",
            (Op::Add, DType::F64) => "row_sum_f64",
            _ => return None,
        };
        // A sum of squares: `cast<f64>(mul(x, x))`.
        let (name, e) = match e {
            Expr::Op {
                op: Op::Mul,
                args,
                dtype: DType::F32,
            } if name == "row_sum_f64" && args.len() == 2 && args[0] == args[1] => {
                ("row_sumsq_f64", &args[0])
            }
            e => (name, e),
        };
        let (buf, off) = row_load(k, e, var)?;
        if mentions(&off, &|w| w == acc) {
            return None;
        }
        return Some(call(
            name,
            vec![Some((buf, off))],
            extent,
            vec![Expr::Var(acc)],
            Some(acc),
        ));
    }
    let ([Stmt::Store { buf, index, value }], true) = (body, vector) else {
        return None;
    };
    let dst = *buf;
    if k.bufs.get(dst)?.dtype == DType::U8 {
        return quantize_call(k, var, extent, (dst, contiguous(index, var)?), value);
    }
    if k.bufs.get(dst)?.dtype != DType::F32 {
        return None;
    }
    let doff = contiguous(index, var)?;
    if let Some(c) = dequantize_call(k, var, extent, (dst, &doff), value) {
        return Some(c);
    }
    if let Some(mut calls) = qdq_calls(k, var, extent, (dst, &doff), value) {
        // Nested pairs: their calls in order, in a loop of one step (the row's variable no
        // longer read).
        return Some(match calls.len() {
            1 => calls.remove(0),
            _ => Stmt::Loop {
                var,
                extent: Expr::i64(1),
                mark: crate::Mark::Serial,
                body: calls,
            },
        });
    }
    let Expr::Op {
        op: Op::Exp,
        args,
        dtype: DType::F32,
    } = value
    else {
        return None;
    };
    let [arg] = args.as_slice() else {
        return None;
    };
    let (x, s) = match arg {
        Expr::Op {
            op: Op::Sub,
            args,
            dtype: DType::F32,
        } if args.len() == 2 => (&args[0], Some(&args[1])),
        x => (x, None),
    };
    let (src, soff) = row_load(k, x, var)?;
    // In place, or apart (distinct buffers never overlap).
    if src == dst && soff != doff {
        return None;
    }
    let s = match s {
        Some(s) => uniform(k, s, var, dst).then(|| s.clone())?,
        None => Expr::Float(0.0, DType::F32),
    };
    Some(call(
        "row_exp_sub",
        vec![Some((src, soff)), Some((dst, doff))],
        extent,
        vec![s],
        None,
    ))
}

/// `dst[i] = cast<u8>(round(src[i] / s) [+ z])` along a row (a quantizer, its clamp taken
/// by the saturating conversion; `s` 1 without the division) as `call row_quantize`.
fn quantize_call(
    k: &Kernel,
    var: VarId,
    extent: &Expr,
    (dst, doff): (usize, Expr),
    value: &Expr,
) -> Option<Stmt> {
    let Expr::Op {
        op: Op::Cast { .. },
        args,
        dtype: DType::U8,
    } = value
    else {
        return None;
    };
    let [inner] = args.as_slice() else {
        return None;
    };
    if let Some(c) = quantize_s8_call(k, var, extent, (dst, &doff), inner) {
        return Some(c);
    }
    let (rounded, z) = match inner {
        Expr::Op {
            op: Op::Add,
            args,
            dtype: DType::F32,
        } if args.len() == 2 => (&args[0], args[1].clone()),
        x => (x, Expr::Float(0.0, DType::F32)),
    };
    let Expr::Op {
        op: Op::Round,
        args,
        dtype: DType::F32,
    } = rounded
    else {
        return None;
    };
    let [arg] = args.as_slice() else {
        return None;
    };
    let (x, s) = quotient(arg)?;
    let uniform = |e: &Expr| uniform(k, e, var, dst);
    if !uniform(&s) || !uniform(&z) {
        return None;
    }
    if let Some((src, soff)) = row_load(k, &x, var) {
        return Some(call(
            "row_quantize",
            vec![Some((src, soff)), Some((dst, doff))],
            extent,
            vec![s, z],
            None,
        ));
    }
    // A sum with a dequantized u8 residual (either order).
    let Expr::Op {
        op: Op::Add,
        args,
        dtype: DType::F32,
    } = &x
    else {
        return None;
    };
    let [a, b] = args.as_slice() else {
        return None;
    };
    let ((src, soff), (res, rz, rs)) = match (row_load(k, a, var), row_load(k, b, var)) {
        (Some(row), _) => (row, dequantized(k, b, var, dst)?),
        (_, Some(row)) => (row, dequantized(k, a, var, dst)?),
        _ => return None,
    };
    Some(call(
        "row_quantize_res",
        vec![Some((src, soff)), Some(res), Some((dst, doff))],
        extent,
        vec![s, z, rz, rs],
        None,
    ))
}

/// A quantizer's rounded argument as `(x, s)`: `x / s`, or `x` itself with `s` 1 (a
/// QOperator requantizer whose scale came before: a division by 1, the same bits).
fn quotient(e: &Expr) -> Option<(Expr, Expr)> {
    match e {
        Expr::Op {
            op: Op::Div,
            args,
            dtype: DType::F32,
        } => match args.as_slice() {
            [x, s] => Some((x.clone(), s.clone())),
            _ => None,
        },
        x => Some((x.clone(), Expr::Float(1.0, DType::F32))),
    }
}

/// `dst[i] = cast<u8>(add(cast<i32>(cast<i8>(round(div(src[i], s)))), 128))` along a row
/// (`inner` the sum: a symmetric int8 quantizer shifted to u8; `s` 1 without the division;
/// `src[i]` or `max(src[i], lo)`) as `call row_quantize_s8`.
fn quantize_s8_call(
    k: &Kernel,
    var: VarId,
    extent: &Expr,
    (dst, doff): (usize, &Expr),
    inner: &Expr,
) -> Option<Stmt> {
    let un = |e: &Expr, want: DType| -> Option<Expr> {
        match e {
            Expr::Op { op, args, dtype: t }
                if *t == want && args.len() == 1 && matches!(op, Op::Cast { .. } | Op::Round) =>
            {
                Some(args[0].clone())
            }
            _ => None,
        }
    };
    let Expr::Op {
        op: Op::Add,
        args,
        dtype: DType::I32,
    } = inner
    else {
        return None;
    };
    let [wide, Expr::Int(128, DType::I32)] = args.as_slice() else {
        return None;
    };
    let narrow = un(wide, DType::I32)?;
    let rounded = un(&narrow, DType::I8)?;
    if !matches!(rounded, Expr::Op { op: Op::Round, .. }) {
        return None;
    }
    let (x, s) = quotient(&un(&rounded, DType::F32)?)?;
    if !uniform(k, &s, var, dst) {
        return None;
    }
    // The row, or the row clamped below by one value (a ReLU before the quantizer).
    let ((src, soff), lo) = match &x {
        Expr::Op {
            op: Op::Max,
            args,
            dtype: DType::F32,
        } if args.len() == 2 => match (row_load(k, &args[0], var), row_load(k, &args[1], var)) {
            (Some(row), _) if uniform(k, &args[1], var, dst) => (row, args[1].clone()),
            (_, Some(row)) if uniform(k, &args[0], var, dst) => (row, args[0].clone()),
            _ => return None,
        },
        x => (
            row_load(k, x, var)?,
            Expr::Float(f64::NEG_INFINITY, DType::F32),
        ),
    };
    Some(call(
        "row_quantize_s8",
        vec![Some((src, soff)), Some((dst, doff.clone()))],
        extent,
        vec![s, lo],
        None,
    ))
}

/// `dst[i] = mul(sub(cast<f32>(cast<u8|i8>(add(round(div(src[i], s)), z))), zo), d)` along
/// a row — a quantize-dequantize pair (without `+ z`, `− zo` or `· d` where they are 0, 0
/// and 1; a division by 2^e as the product by 2^-e it was simplified to; the zero point taken
/// off in integers, `cast<f32>(sub(cast<i32>(q), cast<i32>(cast<u8|i8>(zo))))`, as a dynamic
/// quantizer's feeding an exact f32 product; the byte widened to i32 before f32) of the row or the row scaled by one value — as
/// `call row_qdq`, which computes every such pair as these ops do. A pair of another pair
/// plus a row (an embedding's token, position and type rows summed between pairs) is that
/// pair's calls into `dst`, then this one's from `dst` with the row added.
fn qdq_calls(
    k: &Kernel,
    var: VarId,
    extent: &Expr,
    (dst, doff): (usize, &Expr),
    value: &Expr,
) -> Option<Vec<Stmt>> {
    let op2 = |e: &'_ Expr, want: Op, dtype: DType| -> Option<(Expr, Expr)> {
        match e {
            Expr::Op { op, args, dtype: t } if *op == want && *t == dtype && args.len() == 2 => {
                Some((args[0].clone(), args[1].clone()))
            }
            _ => None,
        }
    };
    let cast_of = |e: &Expr, dtype: DType| -> Option<Expr> {
        match e {
            Expr::Op {
                op: Op::Cast { .. },
                args,
                dtype: t,
            } if *t == dtype && args.len() == 1 => Some(args[0].clone()),
            _ => None,
        }
    };
    let uniform = |e: &Expr| uniform(k, e, var, dst);
    let f = |v: f32| Expr::Float(f64::from(v), DType::F32);
    let (e, d) = match op2(value, Op::Mul, DType::F32) {
        Some((e, d)) if uniform(&d) => (e, d),
        _ => (value.clone(), f(1.0)),
    };
    let (e, zo) = match op2(&e, Op::Sub, DType::F32) {
        Some((e, zo)) if uniform(&zo) => (e, Some(zo)),
        _ => (e, None),
    };
    let inner = cast_of(&e, DType::F32)?;
    // The quantized value q = cast<u8|i8>(a), and what is taken off it.
    let (q, zo) = match (op2(&inner, Op::Sub, DType::I32), zo) {
        (Some((q, z2)), None) => {
            let q = cast_of(&q, DType::I32)?;
            let z2 = cast_of(&z2, DType::I32)?;
            let dtype = z2.dtype(k);
            if !uniform(&cast_of(&z2, dtype)?) || !matches!(dtype, DType::U8 | DType::I8) {
                return None;
            }
            // cast<f32>(z2) as the outer conversion converts (u8/i8 to f32: exact).
            let Expr::Op { op, .. } = &e else {
                return None;
            };
            let back = Expr::Op {
                op: op.clone(),
                args: vec![z2],
                dtype: DType::F32,
            };
            (q, back)
        }
        // (Through a widening to i32 first, exact: a QLinear op's integers read as f32.)
        (_, zo) => match cast_of(&inner, DType::I32) {
            Some(q) if matches!(q.dtype(k), DType::U8 | DType::I8) => (q, zo.unwrap_or(f(0.0))),
            _ => (inner, zo.unwrap_or(f(0.0))),
        },
    };
    let (a, (lo, hi)) = match (cast_of(&q, DType::U8), cast_of(&q, DType::I8)) {
        (Some(a), _) => (a, (0.0, 255.0)),
        (_, Some(a)) => (a, (-128.0, 127.0)),
        _ => return None,
    };
    let (r, z) = match op2(&a, Op::Add, DType::F32) {
        Some((r, z)) if uniform(&z) => (r, z),
        _ => (a, f(0.0)),
    };
    let Expr::Op {
        op: Op::Round,
        args,
        dtype: DType::F32,
    } = &r
    else {
        return None;
    };
    let [e] = args.as_slice() else {
        return None;
    };
    let (x, s) = match (op2(e, Op::Div, DType::F32), op2(e, Op::Mul, DType::F32)) {
        (Some((x, s)), _) if uniform(&s) => (x, s),
        // x·2^-e is x / 2^e exactly.
        (_, Some((x, Expr::Float(c, DType::F32)))) => {
            let s = 1.0 / c as f32;
            let exact = (c as f32).is_normal() && s.is_normal() && s.to_bits() & 0x007f_ffff == 0;
            exact.then_some((x, f(s)))?
        }
        _ => return None,
    };
    // A row added last (not `dst`: calls before write it), to the row or another pair.
    let added = |a: &Expr, r: &Expr| match row_load(k, r, var) {
        Some((rb, roff)) if rb != dst => Some((a.clone(), Some((rb, roff)))),
        _ => None,
    };
    let (x, r) = match op2(&x, Op::Add, DType::F32) {
        Some((a, b)) => added(&a, &b).or_else(|| added(&b, &a))?,
        None => (x, None),
    };
    // The row, the row scaled by one value (softmax's `e · recip(sum)`), or a pair's calls
    // into `dst` first.
    let mut calls = Vec::new();
    let ((src, soff), m) = match (row_load(k, &x, var), op2(&x, Op::Mul, DType::F32)) {
        (Some(row), _) => (row, f(1.0)),
        (None, Some((a, m))) if uniform(&m) && row_load(k, &a, var).is_some() => {
            (row_load(k, &a, var)?, m)
        }
        (None, Some((m, a))) if uniform(&m) && row_load(k, &a, var).is_some() => {
            (row_load(k, &a, var)?, m)
        }
        _ if r.is_some() && !x.loads(dst) => {
            calls = qdq_calls(k, var, extent, (dst, doff), &x)?;
            ((dst, doff.clone()), f(1.0))
        }
        _ => return None,
    };
    // In place, or apart (distinct buffers never overlap).
    if src == dst && soff != *doff {
        return None;
    }
    calls.push(call(
        "row_qdq",
        vec![Some((src, soff)), r, Some((dst, doff.clone()))],
        extent,
        vec![m, s, z, zo, f(lo), f(hi), d],
        None,
    ));
    Some(calls)
}

/// `dst[i] = mul(sub(cast<f32>(src[i]), z), s)` (or without the subtraction; either order
/// of the product) along a row of u8 `src` as `call row_dequantize`.
fn dequantize_call(
    k: &Kernel,
    var: VarId,
    extent: &Expr,
    (dst, doff): (usize, &Expr),
    value: &Expr,
) -> Option<Stmt> {
    let ((src, soff), z, s) = dequantized(k, value, var, dst)?;
    Some(call(
        "row_dequantize",
        vec![Some((src, soff)), Some((dst, doff.clone()))],
        extent,
        vec![z, s],
        None,
    ))
}

/// The u8 row (buffer, offset along `var`), zero point and scale of `e` =
/// `mul(sub(cast<f32>(row[i]), z), s)` (or without the subtraction; either order of the
/// product), `z` and `s` uniform f32 values that do not read `dst`.
fn dequantized(
    k: &Kernel,
    e: &Expr,
    var: VarId,
    dst: usize,
) -> Option<((usize, Expr), Expr, Expr)> {
    let Expr::Op {
        op: Op::Mul,
        args,
        dtype: DType::F32,
    } = e
    else {
        return None;
    };
    let uniform = |e: &Expr| uniform(k, e, var, dst);
    let (x, s) = match args.as_slice() {
        [x, s] if uniform(s) => (x, s),
        [s, x] if uniform(s) => (x, s),
        _ => return None,
    };
    let (cast, z) = match x {
        Expr::Op {
            op: Op::Sub,
            args,
            dtype: DType::F32,
        } if args.len() == 2 && uniform(&args[1]) => (&args[0], args[1].clone()),
        x => (x, Expr::Float(0.0, DType::F32)),
    };
    let Expr::Op {
        op: Op::Cast { .. },
        args,
        dtype: DType::F32,
    } = cast
    else {
        return None;
    };
    let [Expr::Load { buf, index }] = args.as_slice() else {
        return None;
    };
    if k.bufs.get(*buf)?.dtype != DType::U8 {
        return None;
    }
    Some(((*buf, contiguous(index, var)?), z, s.clone()))
}

fn rewrite(k: &mut Kernel, body: &mut [Stmt]) {
    for s in body.iter_mut() {
        let found = match s {
            Stmt::Loop {
                var,
                extent,
                mark,
                body,
            } => row_call(
                k,
                *var,
                extent,
                body,
                matches!(mark, crate::Mark::Vector(_)),
            ),
            _ => None,
        };
        let found = found.or_else(|| split_rows(k, s));
        match found {
            Some(c) => *s = whole_rows(&c).unwrap_or(c),
            None => {
                rewrite(k, s.body_mut());
                if let Some(c) = whole_rows(s) {
                    *s = c;
                }
            }
        }
    }
}

/// A vector loop `for v in 0..n` that reads `v` through `div(v, c)` and `rem(v, c)` (one
/// constant `c` dividing `n`: a reshape's split of the axis, attention's merged heads) as
/// `for a in 0..n/c { for b in 0..c { … } }` — `div(v, c)` is `a`, `rem(v, c)` is `b`, `v`
/// is `a·c + b` — where the inner loop then is a routine call along its rows of `c`;
/// otherwise nothing changes.
fn split_rows(k: &mut Kernel, s: &Stmt) -> Option<Stmt> {
    let Stmt::Loop {
        var,
        extent: Expr::Int(n, DType::I64),
        mark: crate::Mark::Vector(_),
        body,
    } = s
    else {
        return None;
    };
    let var = *var;
    // The divisor: the first `div(v, c)` or `rem(v, c)`.
    let mut c = None;
    for st in body {
        st.walk(&mut |st| {
            for e in st.exprs() {
                e.walk(&mut |e| {
                    if let Expr::Op {
                        op: Op::Div | Op::Rem,
                        args,
                        dtype: DType::I64,
                    } = e
                    {
                        if let [Expr::Var(v), Expr::Int(d, DType::I64)] = args.as_slice() {
                            if *v == var && c.is_none() {
                                c = Some(*d);
                            }
                        }
                    }
                });
            }
        });
    }
    let c = c?;
    if c < SHORT_ROW || *n % c != 0 || *n == c {
        return None;
    }
    let vars = k.vars.len();
    let (a, b) = (vars, vars + 1);
    k.vars.extend([DType::I64, DType::I64]);
    let split = |e: &mut Expr| *e = split_index(e, var, c, (a, b));
    let mut inner = body.clone();
    for st in &mut inner {
        st.walk_mut(&mut |st| st.exprs_mut().into_iter().for_each(split));
    }
    let call = row_call(k, b, &Expr::i64(c), &inner, true);
    let Some(call) = call else {
        k.vars.truncate(vars);
        return None;
    };
    Some(Stmt::Loop {
        var: a,
        extent: Expr::i64(n / c),
        mark: crate::Mark::Serial,
        body: vec![call],
    })
}

/// `e` with `div(v, c)` as `a`, `rem(v, c)` as `b` and any other `v` as `a·c + b`.
fn split_index(e: &Expr, v: VarId, c: i64, (a, b): (VarId, VarId)) -> Expr {
    match e {
        Expr::Var(w) if *w == v => Expr::Var(a) * Expr::i64(c) + Expr::Var(b),
        Expr::Op {
            op: op @ (Op::Div | Op::Rem),
            args,
            dtype: DType::I64,
        } if args.as_slice() == [Expr::Var(v), Expr::i64(c)] => {
            Expr::Var(if *op == Op::Div { a } else { b })
        }
        Expr::Op { op, args, dtype } => Expr::Op {
            op: op.clone(),
            args: args.iter().map(|x| split_index(x, v, c, (a, b))).collect(),
            dtype: *dtype,
        },
        Expr::Load { buf, index } => Expr::Load {
            buf: *buf,
            index: Box::new(split_index(index, v, c, (a, b))),
        },
        e => e.clone(),
    }
}

/// Routines of elementwise rows that one call over consecutive rows computes as well as a
/// call a row.
const ROWWISE: &[&str] = &[
    "row_quantize",
    "row_quantize_res",
    "row_dequantize",
    "row_qdq",
];

/// Routines folding a row into their result from an initial value (their one scalar) in an
/// order that does not change it: a loop carrying the result from row to row folds the rows
/// at once.
const FOLDS: &[&str] = &["row_max", "row_min"];

/// A serial loop of constant extent around one call of a [`ROWWISE`] routine whose rows
/// follow each other in every operand (each offset `base + var·n`, `n` the row's constant
/// length; scalars that do not read `var`): that call over all the rows at once. (A call per
/// row of 32 — what a conv's planes of 32×32 outputs quantize as — costs more than its row.)
/// Likewise a [`FOLDS`] routine whose result is its own initial value (a dynamic quantizer's
/// minimum over a whole tensor, a row at a time).
fn whole_rows(s: &Stmt) -> Option<Stmt> {
    let Stmt::Loop {
        var,
        extent: Expr::Int(rows, _),
        mark: crate::Mark::Serial,
        body,
    } = s
    else {
        return None;
    };
    let [Stmt::Call(c)] = body.as_slice() else {
        return None;
    };
    let [Expr::Int(n, _)] = c.ints.as_slice() else {
        return None;
    };
    let reads = |e: &Expr| mentions(e, &|w| w == *var);
    let fold = match c.result {
        None => ROWWISE.contains(&c.routine.as_str()),
        Some(r) => FOLDS.contains(&c.routine.as_str()) && c.scalars == [Expr::Var(r)],
    };
    if !fold || c.scalars.iter().any(reads) {
        return None;
    }
    let mut operands = Vec::new();
    for o in &c.operands {
        let Some((b, off)) = o else {
            operands.push(None);
            continue;
        };
        if crate::stages::coefficient(off, *var)? != *n {
            return None;
        }
        operands.push(Some((
            *b,
            folded(&replaced(off, &Expr::Var(*var), &Expr::i64(0))),
        )));
    }
    Some(Stmt::Call(Box::new(Call {
        routine: c.routine.clone(),
        operands,
        ints: vec![Expr::i64(n.checked_mul(*rows)?)],
        scalars: c.scalars.clone(),
        result: c.result,
    })))
}

/// The activation (1 sigmoid, 2 tanh) of the first `sigmoid(src[off + var])` or
/// `tanh(src[off + var])` in `e`, with that expression.
fn row_act(k: &Kernel, e: &Expr, var: VarId) -> Option<(i64, Expr, usize, Expr)> {
    let mut found = None;
    e.walk(&mut |x| {
        if found.is_some() {
            return;
        }
        if let Expr::Op {
            op: op @ (Op::Sigmoid | Op::Tanh),
            args,
            dtype: DType::F32,
        } = x
        {
            if let [arg] = args.as_slice() {
                if let Some((src, off)) = row_load(k, arg, var) {
                    let act = if *op == Op::Sigmoid { 1 } else { 2 };
                    found = Some((act, x.clone(), src, off));
                }
            }
        }
    });
    found
}

/// An index with its products and sums of constants folded (`x·0`, `x + 0` too): what is
/// left of a row's offset once its variable is 0.
fn folded(e: &Expr) -> Expr {
    let Expr::Op {
        op: op @ (Op::Add | Op::Mul),
        args,
        dtype: DType::I64,
    } = e
    else {
        return e.clone();
    };
    let args: Vec<Expr> = args.iter().map(folded).collect();
    let (add, int) = (*op == Op::Add, |e: &Expr| match e {
        Expr::Int(v, DType::I64) => Some(*v),
        _ => None,
    });
    match (args.as_slice(), add) {
        ([a, b], _) if int(a).is_some() && int(b).is_some() => {
            let (a, b) = (int(a).unwrap_or(0), int(b).unwrap_or(0));
            let v = if add {
                a.checked_add(b)
            } else {
                a.checked_mul(b)
            };
            v.map_or_else(|| e.clone(), Expr::i64)
        }
        ([x, z] | [z, x], true) if int(z) == Some(0) => x.clone(),
        ([_, z] | [z, _], false) if int(z) == Some(0) => Expr::i64(0),
        _ => Expr::Op {
            op: op.clone(),
            args,
            dtype: DType::I64,
        },
    }
}

/// `e` with every `from` replaced by `to`.
fn replaced(e: &Expr, from: &Expr, to: &Expr) -> Expr {
    if e == from {
        return to.clone();
    }
    match e {
        Expr::Op { op, args, dtype } => Expr::Op {
            op: op.clone(),
            args: args.iter().map(|a| replaced(a, from, to)).collect(),
            dtype: *dtype,
        },
        Expr::Load { buf, index } => Expr::Load {
            buf: *buf,
            index: Box::new(replaced(index, from, to)),
        },
        e => e.clone(),
    }
}

/// Vector loops `dst[off + var] = f(…, act(src[off' + var]), …)` over a row, `act` a sigmoid
/// or tanh: the row's activations first, by `call row_act` into `dst` (16 lanes where the
/// host has AVX-512), then the loop reading them there (an LSTM cell's `o · tanh(c)`: the
/// 4-lane polynomial was most of the loop). Not where `f` reads `dst` otherwise.
fn hoist_acts(k: &Kernel, body: &mut Vec<Stmt>) {
    let mut i = 0;
    while i < body.len() {
        let call = match &body[i] {
            Stmt::Loop {
                var,
                extent,
                mark: crate::Mark::Vector(_),
                body: inner,
            } => (|| {
                let [Stmt::Store { buf, index, value }] = inner.as_slice() else {
                    return None;
                };
                if !a_row(extent, *var) {
                    return None;
                }
                // The activations go to `dst` first: not where the loop reads it (the
                // activation's source included).
                let dst = *buf;
                if k.bufs.get(dst)?.dtype != DType::F32 || value.loads(dst) {
                    return None;
                }
                let doff = contiguous(index, *var)?;
                let (act, e, src, soff) = row_act(k, value, *var)?;
                let call = Stmt::Call(Box::new(Call {
                    routine: "row_act".into(),
                    operands: vec![Some((src, soff)), Some((dst, doff))],
                    ints: vec![extent.clone(), Expr::i64(act)],
                    scalars: vec![],
                    result: None,
                }));
                let to = Expr::Load {
                    buf: dst,
                    index: Box::new(index.clone()),
                };
                Some((call, e, to))
            })(),
            _ => None,
        };
        match call {
            Some((call, from, to)) => {
                if let Stmt::Loop { body: inner, .. } = &mut body[i] {
                    if let Stmt::Store { value, .. } = &mut inner[0] {
                        *value = replaced(value, &from, &to);
                    }
                }
                body.insert(i, call);
                i += 2;
            }
            None => {
                if let Stmt::Loop { body: inner, .. } = &mut body[i] {
                    hoist_acts(k, inner);
                }
                i += 1;
            }
        }
    }
}

/// The `row-calls` transform: loops that are a row's maximum, its f64 sum or `exp(x - s)`
/// along it become calls of the routines that compute them (8-lane AVX2 code where the host
/// has it), a row's sigmoid or tanh inside a vector loop is computed first by one, and a
/// serial loop over consecutive rows of a quantizer's calls becomes one call.
pub fn row_calls(k: &mut Kernel) {
    let mut body = std::mem::take(&mut k.body);
    rewrite(k, &mut body);
    hoist_acts(k, &mut body);
    k.body = body;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consecutive rows' quantizer calls in a serial loop become one call; rows that do not
    /// follow each other (a stride past the row) stay calls a row.
    #[test]
    fn consecutive_rows_are_one_call() {
        let text = |stride: i64| {
            format!(
                "kernel @k(in x: f32[240], out q: u8[240]) {{
  for v0 in 0..3 parallel {{
    for v1 in 0..2 {{
      call row_quantize(src: x[((v0 * 80) + (v1 * {stride}))], dst: q[((v0 * 80) + (v1 * {stride}))]; n=20 s=0.05:f32 z=3.0:f32)
    }}
  }}
}}"
            )
        };
        let mut k = crate::parse_kernel(&text(20)).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(out.contains("n=40") && !out.contains("for v1"), "{out}");
        let mut k = crate::parse_kernel(&text(40)).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(out.contains("n=20") && out.contains("for v1"), "{out}");
    }

    /// The kernel `text` after `row-calls`, printed.
    fn row_calls_of(text: &str) -> String {
        let mut k = crate::parse_kernel(text).unwrap();
        row_calls(&mut k);
        k.to_string()
    }

    #[test]
    fn a_shifted_int8_quantizer_is_a_call() {
        let x = "x[((v0 * 64) + v1)]";
        for (arg, s) in [
            (format!("div({x}, 0.25:f32)"), "0.25"),
            (x.to_string(), "1.0"),
        ] {
            let q = format!("cast<u8>(add(cast<i32>(cast<i8>(round({arg}))), 128:i32))");
            let text = format!(
                "kernel @k(in x: f32[128], out o: u8[128]) {{
  for v0 in 0..2 parallel {{
    for v1 in 0..64 vector(4) {{
      o[((v0 * 64) + v1)] = {q}
    }}
  }}
}}"
            );
            let out = row_calls_of(&text);
            assert!(
                out.contains("call row_quantize_s8(") && out.contains(&format!("s={s}:f32")),
                "{out}"
            );
        }
        // After a ReLU (either order of the maximum's operands).
        for relu in ["max(x[v1], 0.0:f32)", "max(0.0:f32, x[v1])"] {
            let text = format!(
                "kernel @k(in x: f32[128], out o: u8[128]) {{
  for v1 in 0..128 vector(4) {{
    o[v1] = cast<u8>(add(cast<i32>(cast<i8>(round(div({relu}, 0.5:f32)))), 128:i32))
  }}
}}"
            );
            let out = row_calls_of(&text);
            assert!(out.contains("s=0.5:f32 lo=0.0:f32"), "{out}");
        }
        // Another shift is not this quantizer.
        let text = "kernel @k(in x: f32[128], out o: u8[128]) {
  for v1 in 0..128 vector(4) {
    o[v1] = cast<u8>(add(cast<i32>(cast<i8>(round(x[v1]))), 127:i32))
  }
}";
        assert!(!row_calls_of(text).contains("row_quantize_s8"));
    }

    #[test]
    fn a_quantize_dequantize_pair_is_a_call() {
        let text = |value: &str| {
            format!(
                "kernel @k(in x: f32[256], out o: f32[256]) {{
  for v0 in 0..2 parallel {{
    for v1 in 0..2 {{
      for v2 in 0..64 vector(4) {{
        o[((((v0 * 2) + v1) * 64) + v2)] = {value}
      }}
    }}
  }}
}}"
            )
        };
        let x = "x[((((v0 * 64) + 0) * 2) + ((v1 * 64) + v2))]";
        let pair = format!("mul(sub(cast<f32>(cast<u8>(add(round(div({x}, 0.5:f32)), 138.0:f32))), 138.0:f32), 0.5:f32)");
        let out = row_calls_of(&text(&pair));
        // Both rows of 64 consecutive in source and destination: one call each v0.
        assert!(
            out.contains("call row_qdq(") && out.contains("n=128"),
            "{out}"
        );
        assert!(
            out.contains(
                "m=1.0:f32 s=0.5:f32 z=138.0:f32 zo=138.0:f32 lo=0.0:f32 hi=255.0:f32 d=0.5:f32"
            ),
            "{out}"
        );
        // Signed, no zero point, no dequantizer scale, a division by 4 as a product.
        let pair = format!("cast<f32>(cast<i8>(round(mul({x}, 0.25:f32))))");
        let out = row_calls_of(&text(&pair));
        assert!(
            out.contains("s=4.0:f32 z=0.0:f32 zo=0.0:f32 lo=-128.0:f32 hi=127.0:f32 d=1.0:f32"),
            "{out}"
        );
        // The byte widened to i32 first (QLinearSoftmax's output, times 2^8 for its 1/256).
        let pair = format!("cast<f32>(cast<i32>(cast<u8>(round(mul({x}, 256.0:f32)))))");
        let out = row_calls_of(&text(&pair));
        assert!(
            out.contains("s=0.00390625:f32 z=0.0:f32 zo=0.0:f32 lo=0.0:f32 hi=255.0:f32"),
            "{out}"
        );
        // Of the row scaled by a value of the outer loops.
        let pair = format!("cast<f32>(cast<u8>(round(div(mul({x}, recip(x[v0])), 0.5:f32))))");
        let out = row_calls_of(&text(&pair));
        assert!(
            out.contains("call row_qdq(") && out.contains("m=recip(x[v0])"),
            "{out}"
        );
        // Zero points that differ (the routine takes both); the zero point taken off in
        // integers, as a dynamic quantizer's before an exact f32 product.
        let pair =
            format!("sub(cast<f32>(cast<u8>(add(round(div({x}, 0.5:f32)), 3.0:f32))), 4.0:f32)");
        let out = row_calls_of(&text(&pair));
        assert!(out.contains("z=3.0:f32 zo=4.0:f32"), "{out}");
        let pair = format!("cast<f32>(sub(cast<i32>(cast<u8>(add(round(div({x}, x[v0])), x[1]))), cast<i32>(cast<u8>(x[1]))))");
        let out = row_calls_of(&text(&pair));
        assert!(
            out.contains("s=x[v0] z=x[1] zo=cast<f32>(cast<u8>(x[1]))"),
            "{out}"
        );
        // Pairs of pairs plus rows: one call each, in order, the inner ones into `o`.
        let p1 = format!("mul(sub(cast<f32>(cast<u8>(add(round(div({x}, 0.5:f32)), 9.0:f32))), 9.0:f32), 0.5:f32)");
        let p2 = format!("cast<f32>(cast<u8>(round(div(add({p1}, x[v2]), 0.25:f32))))");
        let p3 = format!("cast<f32>(cast<i8>(round(div(add(x[(v2 + 64)], {p2}), 2.0:f32))))");
        let out = row_calls_of(&text(&p3));
        assert_eq!(out.matches("call row_qdq(").count(), 3, "{out}");
        assert!(
            out.contains("r: -, dst: o[") && out.contains("r: x[0], dst: o["),
            "{out}"
        );
        assert!(
            out.contains("r: x[64], dst: o[") && out.contains("s=2.0:f32"),
            "{out}"
        );
        // A product by 3 is no exact division.
        let value = format!("cast<f32>(cast<u8>(round(mul({x}, 3.0:f32))))");
        let out = row_calls_of(&text(&value));
        assert!(!out.contains("call"), "{out}");
    }

    #[test]
    fn rows_inside_a_divided_index_are_calls() {
        // Attention's merged heads: the source's rows of 32 lie 65·32 apart.
        let text = |c: i64| {
            format!(
                "kernel @k(in x: f32[66560], out o: f32[66560]) {{
  for v0 in 0..8 parallel {{
    for v1 in 0..65 {{
      for v2 in 0..128 vector(4) {{
        o[((((v0 * 65) + v1) * 128) + v2)] = cast<f32>(cast<u8>(round(div(x[((((((v0 * 4) + div(v2, {c})) * 65) + v1) * 32) + rem(v2, {c}))], 0.5:f32))))
      }}
    }}
  }}
}}"
            )
        };
        let out = row_calls_of(&text(32));
        assert!(
            out.contains("for v3 in 0..4 {") && out.contains("call row_qdq("),
            "{out}"
        );
        assert!(out.contains("n=32") && !out.contains("vector"), "{out}");
        // Rows shorter than a vector are left to the loop.
        let out = row_calls_of(&text(8));
        assert!(!out.contains("call") && out.contains("div(v2, 8)"), "{out}");
    }

    #[test]
    fn a_sum_of_squares_is_a_call() {
        let text = |b: &str| {
            format!(
                "kernel @k(in x: f32[64], in y: f32[64], out o: f32[1]) {{
  v0: f64 = 0.0:f64
  for v1 in 0..64 {{
    v0: f64 = add(v0, cast<f64>(mul(x[v1], {b}[v1])))
  }}
  o[0] = cast<f32>(v0)
}}"
            )
        };
        let mut k = crate::parse_kernel(&text("x")).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(
            out.contains("call row_sumsq_f64(row: x[0]; n=64 init=v0)"),
            "{out}"
        );
        // A product of two rows is not a square.
        let mut k = crate::parse_kernel(&text("y")).unwrap();
        row_calls(&mut k);
        assert!(!k.to_string().contains("call"), "{k}");
    }

    #[test]
    fn dequantizers_and_residual_quantizers_are_calls() {
        let text = |dtype: &str, value: &str| {
            format!(
                "kernel @k(in x: {dtype}[64], in y: f32[64], out o: f32[64], out q: u8[64]) {{
  for v0 in 0..4 {{
    for v1 in 0..16 vector(4) {{
      {value}
    }}
  }}
}}"
            )
        };
        let dq = "o[((v0 * 16) + v1)] = mul(sub(cast<f32>(x[((v0 * 16) + v1)]), 3.0:f32), 0.5:f32)";
        let mut k = crate::parse_kernel(&text("u8", dq)).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(
            out.contains("call row_dequantize") && out.contains("n=64"),
            "{out}"
        );
        assert!(out.contains("z=3.0:f32 s=0.5:f32"), "{out}");
        // Signed bytes are not the routine's.
        let mut k = crate::parse_kernel(&text("i8", dq)).unwrap();
        row_calls(&mut k);
        assert!(!k.to_string().contains("call"), "{k}");
        let q = "q[((v0 * 16) + v1)] = cast<u8>(add(round(div(add(mul(cast<f32>(x[((v0 * 16) + v1)]), 0.25:f32), y[((v0 * 16) + v1)]), 0.5:f32)), 7.0:f32))";
        let mut k = crate::parse_kernel(&text("u8", q)).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(
            out.contains("call row_quantize_res(src: y[0], res: x[0]"),
            "{out}"
        );
        assert!(
            out.contains("s=0.5:f32 z=7.0:f32 rz=0.0:f32 rs=0.25:f32"),
            "{out}"
        );
    }

    #[test]
    fn a_minimum_carried_over_rows_is_one_call() {
        let text = |init: &str| {
            format!(
                "kernel @k(in x: f32[240], out y: f32[1]) {{
  v0: f32 = inf:f32
  for v1 in 0..12 {{
    v0: f32 = call row_min(row: x[(v1 * 20)]; n=20 init={init})
  }}
  y[0] = v0
}}"
            )
        };
        let mut k = crate::parse_kernel(&text("v0")).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(out.contains("n=240") && !out.contains("for v1"), "{out}");
        // Each row from the same start is not a fold of them all.
        let mut k = crate::parse_kernel(&text("inf:f32")).unwrap();
        row_calls(&mut k);
        let out = k.to_string();
        assert!(out.contains("n=20") && out.contains("for v1"), "{out}");
    }
}
