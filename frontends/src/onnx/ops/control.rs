//! Control flow. Scan over a symbolic or long sequence is a `loop` whose region is the body
//! imported once; shorter Scans, and Loops, unroll over trip counts known at import time
//! (their subgraphs inlined once per iteration); If inlines the taken branch when its condition is known,
//! else computes both branches and selects.

use crate::onnx::OpError;

use ir::{Builder, Dim, Op, Shape, Tensor, Value};

use super::{axis, s, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::value::V;

type R<T> = Result<T, OpError>;

/// Most iterations a Loop may unroll to.
const MAX_ITERATIONS: usize = 4096;

/// Scans longer than this run as a `loop` (so do symbolic ones); shorter ones unroll.
const UNROLL_MAX: usize = 256;

/// Element `t` of `x` along `axis`, with that axis removed.
fn take(b: &mut Builder, x: Value, a: usize, t: i64) -> R<Value> {
    let y = slice_axis(b, x, a, Dim::Const(t), Dim::Const(t + 1), 1)?;
    let mut dims = b.shape(y).dims().to_vec();
    dims.remove(a);
    b.reshape(y, Shape::new(dims)).map_err(s)
}

/// Stacks per-iteration values along a new `axis`.
fn stack(b: &mut Builder, vs: &[Value], a: usize) -> R<Value> {
    let units: Vec<Value> = vs
        .iter()
        .map(|&v| b.unsqueeze(v, a as i64).map_err(s))
        .collect::<R<_>>()?;
    b.op1(Op::Concat { axis: a as i64 }, &units).map_err(s)
}

/// Scan (opset 9+) over explicit states and scan inputs.
fn scan_core(ctx: &mut Ctx, n: &Node, states: Vec<V>, scans: Vec<Value>) -> R<Vec<Value>> {
    let body = n.graph("body")?;
    let m = scans.len();
    let in_axes = n.ints("scan_input_axes")?.unwrap_or_else(|| vec![0; m]);
    let in_dirs = n
        .ints("scan_input_directions")?
        .unwrap_or_else(|| vec![0; m]);
    let k = body.output.len().saturating_sub(states.len());
    let out_axes = n.ints("scan_output_axes")?.unwrap_or_else(|| vec![0; k]);
    let out_dirs = n
        .ints("scan_output_directions")?
        .unwrap_or_else(|| vec![0; k]);
    if in_axes.len() != m || in_dirs.len() != m || out_axes.len() != k || out_dirs.len() != k {
        return Err("scan axes/directions do not match the scan inputs and outputs".into());
    }
    let mut len = None;
    let mut axes_in = Vec::with_capacity(m);
    let mut symbolic = false;
    for (j, &x) in scans.iter().enumerate() {
        let r = ctx.b.rank(x);
        let a = axis(in_axes[j], r)?;
        match ctx.b.shape(x).dim(a).as_const() {
            Some(l) if len.replace(l).is_some_and(|p| p != l) => {
                return Err("scan inputs differ in length".into())
            }
            Some(_) => {}
            None => symbolic = true,
        }
        axes_in.push(a);
    }
    let len = len.unwrap_or(0) as usize;
    // A symbolic, empty or long sequence: a loop over the steps (a long static one whose
    // body a loop cannot hold — a state that grows — still unrolls).
    if symbolic || len == 0 || len > UNROLL_MAX {
        let dirs = (&in_axes[..], &in_dirs[..]);
        let outs = (&out_axes[..], &out_dirs[..]);
        match scan_loop(ctx, n, states.clone(), scans.clone(), dirs, outs) {
            Ok(r) => return Ok(r),
            Err(e) if symbolic || len == 0 || len > MAX_ITERATIONS => return Err(e),
            Err(_) => {}
        }
    }
    let nstate = states.len();
    let mut states = states;
    let mut collected: Vec<Vec<Value>> = vec![Vec::new(); k];
    for t in 0..len {
        let mut args = states.clone();
        for (j, &x) in scans.iter().enumerate() {
            let idx = if in_dirs[j] == 1 { len - 1 - t } else { t };
            let e = take(&mut ctx.b, x, axes_in[j], idx as i64)?;
            args.push(ctx.v(e));
        }
        let outs = ctx.inline(body, args)?;
        if outs.len() != nstate + k {
            return Err("the Scan body has the wrong number of outputs".into());
        }
        states = outs[..nstate].to_vec();
        for (i, v) in outs[nstate..].iter().enumerate() {
            let x = ctx.value_of(v)?;
            collected[i].push(x);
        }
    }
    let mut results = Vec::with_capacity(nstate + k);
    for v in &states {
        results.push(ctx.value_of(v)?);
    }
    for (i, mut vs) in collected.into_iter().enumerate() {
        if vs.is_empty() {
            return Err("a Scan over zero steps has no outputs to stack".into());
        }
        if out_dirs[i] == 1 {
            vs.reverse();
        }
        let r = ctx.b.rank(vs[0]) + 1;
        let a = axis(out_axes[i], r)?;
        results.push(stack(&mut ctx.b, &vs, a)?);
    }
    Ok(results)
}

/// Reverses `x` along axis 0 (of any length).
fn reversed(b: &mut Builder, x: Value) -> R<Value> {
    let n = b.shape(x).dim(0).clone();
    let last = n.sub(&Dim::Const(1))?;
    slice_axis(b, x, 0, last, Dim::Const(-1), -1)
}

/// Moves axis `from` of `x` to `to`.
fn move_axis(b: &mut Builder, x: Value, from: usize, to: usize) -> R<Value> {
    let r = b.rank(x) as i64;
    let mut perm: Vec<i64> = (0..r).filter(|&i| i != from as i64).collect();
    perm.insert(to, from as i64);
    b.transpose(x, &perm).map_err(s)
}

/// Scan as a `loop` (a symbolic or long sequence): the body imported once as the loop's
/// region; scanned inputs moved to axis 0 and reversed where they run backwards, outputs
/// likewise afterwards.
fn scan_loop(
    ctx: &mut Ctx,
    n: &Node,
    states: Vec<V>,
    scans: Vec<Value>,
    (in_axes, in_dirs): (&[i64], &[i64]),
    (out_axes, out_dirs): (&[i64], &[i64]),
) -> R<Vec<Value>> {
    let body = n.graph("body")?;
    let nstate = states.len();
    let mut operands = Vec::with_capacity(nstate + scans.len());
    let mut types = Vec::new();
    for v in &states {
        let x = ctx.value_of(v)?;
        types.push(ctx.b.ty(x).clone());
        operands.push(x);
    }
    let mut count: Option<Dim> = None;
    for (j, &x) in scans.iter().enumerate() {
        let a = axis(in_axes[j], ctx.b.rank(x))?;
        let mut x = move_axis(&mut ctx.b, x, a, 0)?;
        if in_dirs[j] == 1 {
            x = reversed(&mut ctx.b, x)?;
        }
        match &count {
            None => count = Some(ctx.b.shape(x).dim(0).clone()),
            Some(c) => {
                // The same length as the first, checked at run time where not provable.
                let mut dims = ctx.b.shape(x).dims().to_vec();
                dims[0] = c.clone();
                x = ctx.b.refine(x, Shape::new(dims))?;
            }
        }
        let t = ctx.b.ty(x);
        types.push(ir::TensorType::new(
            t.dtype,
            Shape::new(t.shape.dims()[1..].to_vec()),
        ));
        operands.push(x);
    }
    let count = count.ok_or("Scan needs at least one scan input")?;
    let order: Vec<usize> = (0..body.input.len()).collect();
    let outputs: Vec<usize> = (0..body.output.len()).collect();
    let (graph, captured) = ctx.region(body, &order, &types, &[], &outputs, nstate, &[])?;
    operands.extend(captured);
    let outs = ctx.b.op(
        Op::Loop {
            count,
            carry: nstate as i64,
            scan: scans.len() as i64,
            reverse: false,
            body: ir::Region::new(graph),
        },
        &operands,
    )?;
    let mut results = outs[..nstate].to_vec();
    for (i, &y) in outs[nstate..].iter().enumerate() {
        let mut y = y;
        if out_dirs.get(i) == Some(&1) {
            y = reversed(&mut ctx.b, y)?;
        }
        let a = axis(*out_axes.get(i).unwrap_or(&0), ctx.b.rank(y))?;
        results.push(move_axis(&mut ctx.b, y, 0, a)?);
    }
    Ok(results)
}

pub fn scan(ctx: &mut Ctx, n: &Node) -> Res {
    let m = n
        .int("num_scan_inputs")?
        .ok_or("missing attribute `num_scan_inputs`")? as usize;
    if n.version < 9 {
        return scan_v8(ctx, n, m);
    }
    let names: Vec<&str> = (0..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    if names.len() < m {
        return Err("fewer inputs than num_scan_inputs".into());
    }
    let nstate = names.len() - m;
    let states: Vec<V> = names[..nstate]
        .iter()
        .map(|nm| ctx.get(nm).cloned())
        .collect::<R<_>>()?;
    let scans: Vec<Value> = names[nstate..]
        .iter()
        .map(|nm| ctx.ir(nm))
        .collect::<R<_>>()?;
    let outs = scan_core(ctx, n, states, scans)?;
    Ok(outs.into_iter().map(|v| ctx.v(v)).collect())
}

/// Opset 8: every tensor carries a leading batch axis and scanning runs along axis 1, per
/// batch element.
fn scan_v8(ctx: &mut Ctx, n: &Node, m: usize) -> Res {
    if n.input(0).is_some() {
        return Err("Scan-8 sequence_lens is not supported".into());
    }
    let names: Vec<&str> = (1..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    let nstate = names
        .len()
        .checked_sub(m)
        .ok_or("fewer inputs than num_scan_inputs")?;
    let vals: Vec<Value> = names.iter().map(|nm| ctx.ir(nm)).collect::<R<_>>()?;
    if vals.is_empty() {
        return Err("Scan-8 needs at least one input".into());
    }
    for (i, &v) in vals.iter().enumerate() {
        super::rank_at_least(&ctx.b, v, 1 + usize::from(i >= nstate), "a Scan-8 input")?;
    }
    let batch = ctx
        .b
        .shape(vals[0])
        .dim(0)
        .as_const()
        .ok_or("Scan-8 needs a static batch")?;
    if batch as usize > MAX_ITERATIONS {
        return Err(format!("Scan-8 over a batch of {batch} is more than kiln unrolls").into());
    }
    if batch == 0 {
        return scan_v8_empty(ctx, n, &vals, nstate);
    }
    let mut per_batch: Vec<Vec<Value>> = Vec::new();
    for bi in 0..batch {
        let states = vals[..nstate]
            .iter()
            .map(|&v| take(&mut ctx.b, v, 0, bi).map(|x| ctx.v(x)))
            .collect::<R<Vec<_>>>()?;
        let scans = vals[nstate..]
            .iter()
            .map(|&v| take(&mut ctx.b, v, 0, bi))
            .collect::<R<Vec<_>>>()?;
        per_batch.push(scan_core(ctx, n, states, scans)?);
    }
    let outs = per_batch[0].len();
    (0..outs)
        .map(|i| {
            let column: Vec<Value> = per_batch.iter().map(|r| r[i]).collect();
            stack(&mut ctx.b, &column, 0).map(|v| ctx.v(v))
        })
        .collect()
}

/// Scan-8 over an empty batch: every output is empty along the batch axis. The body is
/// imported once on zeros of one batch element's shape only to type the outputs (that
/// computation is dead and optimized away).
fn scan_v8_empty(ctx: &mut Ctx, n: &Node, vals: &[Value], nstate: usize) -> Res {
    let mut units = Vec::with_capacity(vals.len());
    for &v in vals {
        let ty = ctx.b.ty(v).clone();
        let dims = ty.shape.dims()[1..]
            .iter()
            .map(|d| d.as_const().and_then(|c| usize::try_from(c).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or("Scan-8 over an empty batch needs static element shapes")?;
        let zero = ctx.b.constant(Tensor::zeros(ty.dtype, dims))?;
        units.push(zero);
    }
    let states = units[..nstate].iter().map(|&v| ctx.v(v)).collect();
    let outs = scan_core(ctx, n, states, units[nstate..].to_vec())?;
    outs.iter()
        .map(|&o| {
            let ty = ctx.b.ty(o).clone();
            let dims = std::iter::once(Some(0))
                .chain(
                    ty.shape
                        .dims()
                        .iter()
                        .map(|d| d.as_const().and_then(|c| usize::try_from(c).ok())),
                )
                .collect::<Option<Vec<usize>>>()
                .ok_or("Scan-8 over an empty batch needs static output shapes")?;
            let empty = ctx.b.constant(Tensor::zeros(ty.dtype, dims))?;
            Ok(ctx.v(empty))
        })
        .collect()
}

/// A condition the import can know: constant, or derived from specialized inputs (then the
/// graph is specialized for it, and only the taken branch is imported).
fn known_bool(ctx: &Ctx, name: &str) -> Option<bool> {
    let t = ctx.try_static(name)?;
    (t.numel() == 1).then(|| t.data().get_i128(0) != 0)
}

pub fn if_(ctx: &mut Ctx, n: &Node) -> Res {
    let cond = n.req(0)?;
    let then_g = n.graph("then_branch")?;
    let else_g = n.graph("else_branch")?;
    if let Some(c) = known_bool(ctx, cond) {
        return ctx.inline(if c { then_g } else { else_g }, vec![]);
    }
    // Both branches, then a select per output: valid because branches have no effects.
    let t = ctx.inline(then_g, vec![])?;
    let e = ctx.inline(else_g, vec![])?;
    if t.len() != e.len() {
        return Err("If branches have different numbers of outputs".into());
    }
    let c = ctx.ir(cond)?;
    let c = ctx.b.reshape(c, Shape::scalar())?;
    let mut out = Vec::with_capacity(t.len());
    for (tv, ev) in t.iter().zip(&e) {
        let (x, y) = (ctx.value_of(tv)?, ctx.value_of(ev)?);
        let (tx, ty) = (ctx.b.ty(x).clone(), ctx.b.ty(y).clone());
        if tx != ty {
            if tx.dtype != ty.dtype || tx.rank() != ty.rank() {
                return Err(format!(
                    "If branches produce {tx} and {ty} and the condition is only known at run time"
                )
                .into());
            }
            // Sizes that differ by branch are symbols the choice defines when it runs.
            let mut dims = Vec::with_capacity(tx.rank());
            for (p, q) in tx.shape.dims().iter().zip(ty.shape.dims()) {
                dims.push(if p == q {
                    p.clone()
                } else {
                    ctx.fresh_symbol("if")
                });
            }
            let op = Op::Choose {
                shape: Shape::new(dims),
            };
            let r = ctx.b.op1(op, &[c, x, y])?;
            out.push(ctx.v(r));
            continue;
        }
        let shape = ctx.b.shape(x).clone();
        let cb = ctx.b.broadcast_to(c, &shape)?;
        let r = ctx.b.op1(Op::Select, &[cb, x, y])?;
        out.push(ctx.v(r));
    }
    Ok(out)
}

/// Loop as a `loop` op: a trip count that is a symbolic dim, more than unrolls well, or read
/// from data, and a condition that stays true (absent or known true, and the body's known
/// true when it starts true). The iteration number is scanned from an iota (`dyn_iota` for a
/// trip count from data, whose length is then a symbol bound at run time). `None`: not that
/// form.
fn loop_region(ctx: &mut Ctx, n: &Node) -> R<Option<Vec<V>>> {
    let body = n.graph("body")?;
    let Some(m) = n.input(0) else {
        return Ok(None);
    };
    let trip = ctx.static_dims(m).ok().and_then(|t| t.first().cloned());
    // A constant count unrolls when short (or negative: no iterations), and also when the
    // body cannot be a loop's region (a carried value that grows).
    let fixed = trip.as_ref().and_then(|c| c.as_const());
    if fixed.is_some_and(|c| c <= UNROLL_MAX as i64) {
        return Ok(None);
    }
    let unrollable = fixed.is_some_and(|c| c <= MAX_ITERATIONS as i64);
    if let Some(c) = n.input(1) {
        if known_bool(ctx, c) != Some(true) {
            return Ok(None);
        }
    }
    let names: Vec<&str> = (2..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    let nc = names.len();
    let k = body.output.len().saturating_sub(1 + nc);
    let mut operands = Vec::with_capacity(nc + 1);
    let mut types = Vec::with_capacity(nc + 1);
    for nm in &names {
        let x = ctx.ir(nm)?;
        types.push(ctx.b.ty(x).clone());
        operands.push(x);
    }
    // Iteration numbers 0..count, one per step; a trip count read from data is a symbol
    // bound when the model runs.
    let (count, iters) = match trip {
        Some(count) => {
            let ty = ir::TensorType::new(ir::DType::I64, Shape::new(vec![count.clone()]));
            let iota = ctx.b.op1(Op::Iota { axis: 0, ty }, &[])?;
            (count, iota)
        }
        None => {
            let mv = ctx.ir(m)?;
            let mv = ctx.b.reshape(mv, Shape::scalar())?;
            let mv = ctx.b.cast(mv, ir::DType::I64)?;
            let count = ctx.fresh_symbol("trips");
            let op = Op::DynIota {
                count: count.clone(),
            };
            (count, ctx.b.op1(op, &[mv])?)
        }
    };
    operands.push(iters);
    types.push(ir::TensorType::new(ir::DType::I64, Shape::scalar()));
    let order: Vec<usize> = (2..2 + nc).chain([0]).collect();
    let known = [(1, Tensor::scalar(true))];
    let outputs: Vec<usize> = (1..1 + nc + k).collect();
    let region = ctx.region(body, &order, &types, &known, &outputs, nc, &[0]);
    let (graph, captured) = match region {
        Ok(r) => r,
        // A condition the body computes from data: the unrolled form (or its error).
        Err(e)
            if unrollable
                || e.to_string()
                    .contains("condition is only known at run time") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    operands.extend(captured);
    let outs = ctx.b.op(
        Op::Loop {
            count,
            carry: nc as i64,
            scan: 1,
            reverse: false,
            body: ir::Region::new(graph),
        },
        &operands,
    )?;
    Ok(Some(outs.into_iter().map(|v| ctx.v(v)).collect()))
}

pub fn loop_(ctx: &mut Ctx, n: &Node) -> Res {
    if let Some(outs) = loop_region(ctx, n)? {
        return Ok(outs);
    }
    let body = n.graph("body")?;
    let trip = n
        .input(0)
        .map(|m| ctx.static_ints(m))
        .transpose()?
        .map(|v| v.first().copied().unwrap_or(0));
    let mut cond = match n.input(1) {
        Some(c) => Some(
            ctx.static_tensor(c)
                .map_err(|_| {
                    "the Loop condition must be known when the model is imported".to_string()
                })?
                .data()
                .get_i128(0)
                != 0,
        ),
        None => None,
    };
    let names: Vec<&str> = (2..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    let mut carried: Vec<V> = names
        .iter()
        .map(|nm| ctx.get(nm).cloned())
        .collect::<R<_>>()?;
    let k = body.output.len().saturating_sub(1 + carried.len());
    let mut collected: Vec<Vec<Value>> = vec![Vec::new(); k];
    let mut i: i64 = 0;
    loop {
        if trip.is_some_and(|m| i >= m) || cond == Some(false) {
            break;
        }
        if i as usize >= MAX_ITERATIONS {
            return Err(format!("Loop runs more than {MAX_ITERATIONS} iterations").into());
        }
        let mut args = vec![
            V::data(Tensor::scalar(i)),
            V::data(Tensor::scalar(cond.unwrap_or(true))),
        ];
        args.extend(carried.iter().cloned());
        let outs = ctx.inline(body, args)?;
        if outs.len() != 1 + carried.len() + k {
            return Err("the Loop body has the wrong number of outputs".into());
        }
        cond = Some(
            outs[0]
                .known_tensor()
                .ok_or("the Loop condition is only known at run time")?
                .data()
                .get_i128(0)
                != 0,
        );
        carried = outs[1..1 + carried.len()].to_vec();
        for (j, v) in outs[1 + carried.len()..].iter().enumerate() {
            let x = ctx.value_of(v)?;
            collected[j].push(x);
        }
        i += 1;
        if trip.is_none() && cond.is_none() {
            return Err("a Loop without trip count or condition never ends".into());
        }
    }
    let mut out = carried;
    for vs in collected {
        if vs.is_empty() {
            return Err("a Loop that runs zero times has no scan outputs to stack".into());
        }
        let x = stack(&mut ctx.b, &vs, 0)?;
        out.push(ctx.v(x));
    }
    Ok(out)
}
