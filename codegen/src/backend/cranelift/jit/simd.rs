//! SIMD code for vector loops and reductions in the Cranelift backend (the f32x4 polynomials
//! of transcendental functions in `vmath.rs`).
//!
//! **Vector loops.** A loop marked `vector(_)` whose body holds only `Store`s and `Set`s of
//! loop-local temporaries (each set before it is read, no nested loop, `Check` or `Call`, and
//! every store of a 32- or 64-bit dtype) runs as a main loop over 4 lanes, then the scalar
//! loop for the last `extent % 4` iterations. Within the main loop every expression takes one
//! of three forms: uniform (it mentions neither the loop variable nor a temporary of the
//! body: such subexpressions are computed once, before the main loop), a native vector
//! (`f32x4` for f32, `i32x4` for i32 and u32, an `i32x4` lane mask for bool), or four scalars
//! (any other dtype, gathered loads, and ops without a vector form, which apply the scalar
//! lowering lane by lane). A load or store whose index has coefficient 1 in the loop variable
//! (`Add`/`Sub`/`Mul` by constants of `Var`, `Dim`, `Int` and uniform terms) is one vector
//! access; any other index is computed per lane and accessed per lane.
//!
//! **Reductions.** A loop (any mark) whose body is exactly `acc = max|min(acc, e)` with `acc`
//! and `e` f32, or `acc = add(acc, cast<f64>(e))` with `acc` f64 and `e` f32 (the lowering's
//! f32 sum), keeps two vector accumulators (8 iterations per trip): `f32x4` for max and min,
//! pairs of `f64x2` for the sum (each `f32x4` promoted in halves). The lanes are combined after
//! the main loop and the scalar loop finishes the last `extent % 8` iterations. Max and min
//! give exactly the sequential result (Cranelift's `fmax`/`fmin` are associative: NaN if any
//! operand is NaN, -0 < +0); the sum is reassociated, within rounding of the sequential f64
//! sum.
//!
//! **Accuracy contract.** Vector ops are IEEE-exact and identical to the scalar lowering
//! (`rsqrt` too: in `f64x2` halves, rounded once, as the scalar code), except f32 `exp`, `log`,
//! `sigmoid`, `tanh` and `erf`, which use `f32x4` polynomials (Cephes-style range reduction
//! and coefficients for `exp`, `log` and `tanh`; fitted ones for `erf`): within 1 ulp (`exp`,
//! `log`, `tanh`, `erf`) and 2 ulp (`sigmoid`) of the f64 function rounded to f32 over all
//! finite inputs (`log` and `erf` checked on every f32, by an ignored test in `jit/tests/vector.rs`), and
//! exact at ±0, ±inf and NaN (NaN stays NaN; `log` gives -inf at ±0 and NaN below zero).
//! Polynomials use fused multiply-adds where the host has them (x64 with FMA), mul and add
//! otherwise, so their last bit may differ between hosts; the bounds hold for both (the tests
//! check both). Every other transcendental function is the scalar libcall, per lane.

use std::collections::{HashMap, HashSet};

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use ir::{DType, Op};

use super::{Lower, R};
use kernel::recognize::{mentions, reduction, well_formed, Reduction};
use kernel::{Expr, Kernel, Stmt, VarId};

/// Lanes of the vector code.
const W: usize = 4;

/// Vector loops of a constant extent up to this many lanes (in whole vectors) run unrolled.
const UNROLL: i64 = 16;

#[cfg(test)]
thread_local! {
    /// Vector loops and reductions compiled on this thread, for tests to check that a kernel
    /// took the SIMD path: `(vector loops, reductions)`.
    pub(super) static COMPILED: std::cell::Cell<(usize, usize)> =
        const { std::cell::Cell::new((0, 0)) };
}

#[cfg(test)]
thread_local! {
    /// Ops of vector loops lowered lane by lane (the scalar lowering per lane) on this thread,
    /// for tests to check that an op took its native vector form.
    pub(super) static LANEWISE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Set by tests to compile polynomials without fused multiply-adds on this thread even
    /// when the host has them (so that both forms are tested).
    pub(super) static NO_FMA: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn count(vector: usize, reduction: usize) {
    COMPILED.with(|c| {
        let (a, b) = c.get();
        c.set((a + vector, b + reduction));
    });
}

/// A value of the vector loop, for the 4 lanes `v = base .. base + 4`.
#[derive(Clone, Copy, Debug)]
enum V {
    /// The same scalar in every lane.
    Uni(Value),
    /// A native vector (see [`vec_type`]).
    Vec(Value),
    /// One scalar per lane.
    Lanes([Value; W]),
}

/// The vector type of a dtype with a native vector form: f32 is `f32x4`; i32 and u32 are
/// `i32x4`; bool is an `i32x4` mask, each lane all ones (true) or zero.
fn vec_type(d: DType) -> Option<Type> {
    match d {
        DType::F32 => Some(types::F32X4),
        DType::I32 | DType::U32 | DType::Bool => Some(types::I32X4),
        _ => None,
    }
}

/// What the vector code of one loop knows: its variable and the temporaries its body sets.
struct Cx {
    var: VarId,
    temps: HashSet<VarId>,
}

impl Cx {
    /// Whether `e` differs between iterations.
    fn varies(&self, e: &Expr) -> bool {
        mentions(e, &|w| w == self.var || self.temps.contains(&w))
    }

    /// The coefficient of the loop variable in index `e`, if `e` is affine in it with a
    /// constant coefficient (0: uniform).
    fn coeff(&self, e: &Expr) -> Option<i64> {
        if !self.varies(e) {
            return Some(0);
        }
        match e {
            Expr::Var(w) if *w == self.var => Some(1),
            Expr::Op {
                op,
                args,
                dtype: DType::I64,
            } if args.len() == 2 => {
                let (a, b) = (self.coeff(&args[0])?, self.coeff(&args[1])?);
                match op {
                    Op::Add => a.checked_add(b),
                    Op::Sub => a.checked_sub(b),
                    Op::Mul => match (&args[0], &args[1]) {
                        (Expr::Int(k, _), _) if a == 0 => b.checked_mul(*k),
                        (_, Expr::Int(k, _)) if b == 0 => a.checked_mul(*k),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The temporaries a vector loop's body sets, if the body can be vectorized.
fn vector_body(k: &Kernel, var: VarId, body: &[Stmt]) -> Option<HashSet<VarId>> {
    let temps: HashSet<VarId> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Set { var, .. } => Some(*var),
            _ => None,
        })
        .collect();
    if temps.contains(&var) || temps.iter().any(|&w| w >= k.vars.len()) {
        return None;
    }
    // Each temporary is set before it is read: nothing flows between iterations.
    let mut set = HashSet::new();
    let read_ok = |e: &Expr, set: &HashSet<VarId>| {
        well_formed(k, e) && !mentions(e, &|w| temps.contains(&w) && !set.contains(&w))
    };
    for s in body {
        match s {
            Stmt::Set { var, value } => {
                if !read_ok(value, &set) {
                    return None;
                }
                set.insert(*var);
            }
            Stmt::Store { buf, index, value } => {
                let d = k.bufs.get(*buf)?.dtype;
                let bytes = matches!(d, DType::U8 | DType::I8) && narrowed(value).is_some();
                if !(matches!(d.bits(), 32 | 64) || bytes)
                    || !read_ok(index, &set)
                    || !read_ok(value, &set)
                {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(temps)
}

/// The f32 or i32 operand of a conversion to u8 or i8 (a quantizer's store; an i8
/// quantizer's value shifted into u8 in i32), if `value` is one.
fn narrowed(value: &Expr) -> Option<&Expr> {
    match value {
        Expr::Op {
            op: Op::Cast { .. },
            args,
            dtype: DType::U8 | DType::I8,
        } => match args.as_slice() {
            [x @ Expr::Op {
                dtype: DType::F32 | DType::I32,
                ..
            }] => Some(x),
            _ => None,
        },
        _ => None,
    }
}

/// Little-endian lane order, for bitcasts between vector types.
pub(super) fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl Lower<'_, '_> {
    /// Lowers `for var in 0..extent vector(_) { body }` as SIMD code; false (nothing emitted)
    /// if the body is not of the form this handles.
    pub(super) fn vector_loop(&mut self, var: VarId, extent: &Expr, body: &[Stmt]) -> R<bool> {
        let Some(temps) = vector_body(self.k, var, body) else {
            return Ok(false);
        };
        let cx = Cx { var, temps };
        #[cfg(test)]
        count(1, 0);
        let (v, _) = self.var(var)?;
        let exprs: Vec<&Expr> = body
            .iter()
            .flat_map(|s| match s {
                Stmt::Set { value, .. } => vec![value],
                Stmt::Store { index, value, .. } => vec![index, value],
                _ => vec![],
            })
            .collect();
        // A few whole vectors (a blocked image's 16 channels a pixel): the copies of the body
        // one after another, without a loop or a scalar tail to pay for each pixel.
        if let Expr::Int(n @ 1..=UNROLL, _) = *extent {
            if n % W as i64 == 0 {
                for &e in &exprs {
                    self.hoist(e, &cx)?;
                }
                for at in (0..n).step_by(W) {
                    let at = self.b.ins().iconst(types::I64, at);
                    self.def(v, at)?;
                    self.vector_stmts(body, &cx)?;
                }
                self.hoisted.clear();
                let end = self.b.ins().iconst(types::I64, n);
                self.def(v, end)?;
                return Ok(true);
            }
        }
        let n = self.expr_of(extent, DType::I64, "a loop extent")?;
        let nv = self.b.ins().band_imm_s(n, -(W as i64));
        let zero = self.b.ins().iconst(types::I64, 0);
        self.counted_loop(
            v,
            zero,
            nv,
            W as i64,
            Some(&mut |s| {
                for &e in &exprs {
                    s.hoist(e, &cx)?;
                }
                Ok(())
            }),
            &mut |s| s.vector_stmts(body, &cx),
        )?;
        self.hoisted.clear();
        let start = self.use_var(v)?;
        self.counted_loop(v, start, n, 1, None, &mut |s| s.stmts(body))?;
        Ok(true)
    }

    /// Lowers a reduction loop (see the module docs) as SIMD code; false (nothing emitted) if
    /// the loop is not one.
    pub(super) fn reduction_loop(&mut self, var: VarId, extent: &Expr, body: &[Stmt]) -> R<bool> {
        let Some(Reduction { acc, op, dtype, e }) = reduction(self.k, var, body) else {
            return Ok(false);
        };
        let cx = Cx {
            var,
            temps: HashSet::new(),
        };
        #[cfg(test)]
        count(0, 1);
        let (v, _) = self.var(var)?;
        let (accv, _) = self.var(acc)?;
        let n = self.expr_of(extent, DType::I64, "a loop extent")?;
        let nv = self.b.ins().band_imm_s(n, -2 * W as i64);
        let zero = self.b.ins().iconst(types::I64, 0);
        let a0 = self.use_var(accv)?;
        let sum = dtype == DType::F64;
        // Accumulators start at a value that leaves the result unchanged: the initial value
        // itself for max and min, -0 for the sum (x + -0 = x for every x, -0 included).
        let (ty, init, count) = if sum {
            let z = self.b.ins().f64const(-0.0);
            (types::F64X2, self.b.ins().splat(types::F64X2, z), 4)
        } else {
            (types::F32X4, self.b.ins().splat(types::F32X4, a0), 2)
        };
        let accs: Vec<_> = (0..count).map(|_| self.b.declare_var(ty)).collect();
        for &a in &accs {
            self.def(a, init)?;
        }
        let op = op.clone();
        self.counted_loop(
            v,
            zero,
            nv,
            2 * W as i64,
            Some(&mut |s| s.hoist(e, &cx)),
            &mut |s| {
                let base = s.use_var(v)?;
                for g in 0..2 {
                    if g == 1 {
                        let next = s.b.ins().iadd_imm_s(base, W as i64);
                        s.def(v, next)?;
                    }
                    let x = s.vexpr(e, &cx, &HashMap::new())?;
                    let x = s.vec_of(x, DType::F32);
                    if sum {
                        let lo = s.b.ins().fvpromote_low(x);
                        let hi = s.high_half(x);
                        let hi = s.b.ins().fvpromote_low(hi);
                        for (j, h) in [lo, hi].into_iter().enumerate() {
                            let a = s.use_var(accs[2 * g + j])?;
                            let r = s.b.ins().fadd(a, h);
                            s.def(accs[2 * g + j], r)?;
                        }
                    } else {
                        let a = s.use_var(accs[g])?;
                        let r = s.minmax(&op, a, x);
                        s.def(accs[g], r)?;
                    }
                }
                s.def(v, base)
            },
        )?;
        self.hoisted.clear();
        // Lanes combined: pairwise, then with the value before the loop.
        let mut vals = Vec::new();
        for &a in &accs {
            vals.push(self.use_var(a)?);
        }
        let before = self.use_var(accv)?;
        let r = if sum {
            let s0 = self.b.ins().fadd(vals[0], vals[2]);
            let s1 = self.b.ins().fadd(vals[1], vals[3]);
            let s = self.b.ins().fadd(s0, s1);
            let (l0, l1) = (
                self.b.ins().extractlane(s, 0),
                self.b.ins().extractlane(s, 1),
            );
            let h = self.b.ins().fadd(l0, l1);
            self.b.ins().fadd(before, h)
        } else {
            let m = self.minmax(&op, vals[0], vals[1]);
            let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(m, i)).collect();
            let m01 = self.minmax(&op, l[0], l[1]);
            let m23 = self.minmax(&op, l[2], l[3]);
            let h = self.minmax(&op, m01, m23);
            self.minmax(&op, before, h)
        };
        self.def(accv, r)?;
        let start = self.use_var(v)?;
        self.counted_loop(v, start, n, 1, None, &mut |s| s.stmts(body))?;
        Ok(true)
    }

    fn minmax(&mut self, op: &Op, a: Value, b: Value) -> Value {
        if *op == Op::Max {
            self.b.ins().fmax(a, b)
        } else {
            self.b.ins().fmin(a, b)
        }
    }

    /// `rsqrt` exactly as the scalar lowering computes it: `1 / sqrt(x)` in f64, rounded once
    /// to f32 (two `f64x2` halves).
    fn vrsqrt(&mut self, x: Value) -> Value {
        let hi = self.high_half(x);
        let one = self.b.ins().f64const(1.0);
        let one = self.b.ins().splat(types::F64X2, one);
        let mut halves = [x; 2];
        for (h, v) in halves.iter_mut().zip([x, hi]) {
            let w = self.b.ins().fvpromote_low(v);
            let s = self.b.ins().sqrt(w);
            let r = self.b.ins().fdiv(one, s);
            *h = self.b.ins().fvdemote(r);
        }
        // Lanes 0 and 1 of each half, side by side.
        let bytes: Vec<u8> = (0..8).chain(16..24).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let a = self.b.ins().bitcast(types::I8X16, le(), halves[0]);
        let b = self.b.ins().bitcast(types::I8X16, le(), halves[1]);
        let r = self.b.ins().shuffle(a, b, imm);
        self.b.ins().bitcast(types::F32X4, le(), r)
    }

    /// Lanes 2 and 3 of an `f32x4`, moved to lanes 0 and 1.
    fn high_half(&mut self, x: Value) -> Value {
        let bytes: Vec<u8> = (8..16).chain(8..16).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let xb = self.b.ins().bitcast(types::I8X16, le(), x);
        let sh = self.b.ins().shuffle(xb, xb, imm);
        self.b.ins().bitcast(types::F32X4, le(), sh)
    }

    /// Computes the uniform subexpressions of `e` worth computing once (loads and ops), into
    /// `hoisted`.
    fn hoist(&mut self, e: &Expr, cx: &Cx) -> R<()> {
        if !cx.varies(e) {
            if matches!(e, Expr::Load { .. } | Expr::Op { .. })
                && !self.hoisted.contains_key(&(e as *const Expr))
            {
                let r = self.expr(e)?;
                self.hoisted.insert(e as *const Expr, r);
            }
            return Ok(());
        }
        match e {
            Expr::Load { index, .. } => self.hoist(index, cx),
            Expr::Op { args, .. } => {
                for a in args {
                    self.hoist(a, cx)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One trip of the main loop: lanes `v .. v + 4`.
    fn vector_stmts(&mut self, body: &[Stmt], cx: &Cx) -> R<()> {
        let mut env: HashMap<VarId, (V, DType)> = HashMap::new();
        for s in body {
            match s {
                Stmt::Set { var, value } => {
                    let (_, d) = self.var(*var)?;
                    let x = self.vexpr(value, cx, &env)?;
                    if x.1 != d {
                        return Err(self
                            .invalid(format!("the value set to v{var} is {}, expected {d}", x.1)));
                    }
                    env.insert(*var, x);
                }
                Stmt::Store { buf, index, value } => {
                    let d = self.buf_dtype(*buf)?;
                    if let (Some(x), DType::U8 | DType::I8) = (narrowed(value), d) {
                        // An f32 converted to bytes: saturated to i32, clamped to the type's
                        // range (NaN 0, as the scalar conversion), narrowed, stored as one i32.
                        let (x, xd) = self.vexpr(x, cx, &env)?;
                        let x = self.vec_of((x, xd), xd);
                        let w = if xd == DType::I32 {
                            // An integer's conversion keeps its low byte: that byte, in
                            // 0..=255 (the narrowing below then keeps it as it is).
                            let byte = self.splat_i32(0xff);
                            let w = self.ins().band(x, byte);
                            if d == DType::I8 {
                                // (As i8: the same byte, from its signed value.)
                                let sh = self.ins().iconst(types::I32, 24);
                                let up = self.ins().ishl(w, sh);
                                self.ins().sshr(up, sh)
                            } else {
                                w
                            }
                        } else {
                            let w = self.ins().fcvt_to_sint_sat(types::I32X4, x);
                            let (lo, hi) = if d == DType::U8 {
                                (0, 255)
                            } else {
                                (-128, 127)
                            };
                            let (lo, hi) = (self.splat_i32(lo), self.splat_i32(hi));
                            let w = self.ins().smax(w, lo);
                            self.ins().smin(w, hi)
                        };
                        let h = self.ins().snarrow(w, w);
                        let q = if d == DType::U8 {
                            self.ins().unarrow(h, h)
                        } else {
                            self.ins().snarrow(h, h)
                        };
                        let q = self.ins().bitcast(types::I32X4, le(), q);
                        let q = self.ins().extractlane(q, 0);
                        let flags = MemFlagsData::new().with_notrap();
                        if cx.coeff(index) == Some(1) {
                            let addr = self.address(*buf, index)?;
                            self.b.ins().store(flags, q, addr, 0);
                        } else {
                            let i = self.vexpr(index, cx, &env)?;
                            let is = self.index_lanes(i)?;
                            for (l, &at) in is.iter().enumerate() {
                                let addr = self.address_at(*buf, at)?;
                                let byte = self.ins().ushr_imm_s(q, 8 * l as i64);
                                let byte = self.ins().ireduce(types::I8, byte);
                                self.b.ins().store(flags, byte, addr, 0);
                            }
                        }
                        continue;
                    }
                    let (x, xd) = self.vexpr(value, cx, &env)?;
                    if xd != d {
                        let name = &self.k.bufs[*buf].name;
                        return Err(self.invalid(format!(
                            "the value stored to `{name}` is {xd}, expected {d}"
                        )));
                    }
                    let flags = MemFlagsData::new().with_notrap();
                    if cx.coeff(index) == Some(1) && vec_type(d).is_some() {
                        let addr = self.address(*buf, index)?;
                        let x = self.vec_of((x, d), d);
                        self.b.ins().store(flags, x, addr, 0);
                    } else {
                        let i = self.vexpr(index, cx, &env)?;
                        let is = self.index_lanes(i)?;
                        let xs = self.lanes_of((x, d));
                        for l in 0..W {
                            let addr = self.address_at(*buf, is[l])?;
                            self.b.ins().store(flags, xs[l], addr, 0);
                        }
                    }
                }
                _ => unreachable!("vector bodies hold only stores and sets"),
            }
        }
        // After the loop, a temporary holds its value of the last iteration.
        for (&w, &x) in &env {
            let (var, _) = self.var(w)?;
            let last = self.lanes_of(x)[W - 1];
            self.def(var, last)?;
        }
        Ok(())
    }

    fn index_lanes(&mut self, (i, d): (V, DType)) -> R<[Value; W]> {
        if d != DType::I64 {
            return Err(self.invalid(format!("an index is {d}, expected i64")));
        }
        Ok(self.lanes_of((i, d)))
    }

    /// `e` over the lanes of the current trip (the loop variable holds the first lane's
    /// index); `env` holds the temporaries set so far.
    fn vexpr(&mut self, e: &Expr, cx: &Cx, env: &HashMap<VarId, (V, DType)>) -> R<(V, DType)> {
        if let Some(&(x, d)) = self.hoisted.get(&(e as *const Expr)) {
            return Ok((V::Uni(x), d));
        }
        match e {
            Expr::Var(w) if *w == cx.var => {
                let (v, _) = self.var(*w)?;
                let base = self.use_var(v)?;
                let mut ls = [base; W];
                for (l, x) in ls.iter_mut().enumerate().skip(1) {
                    *x = self.b.ins().iadd_imm_s(base, l as i64);
                }
                Ok((V::Lanes(ls), DType::I64))
            }
            Expr::Var(w) if cx.temps.contains(w) => env
                .get(w)
                .copied()
                .ok_or_else(|| self.invalid(format!("v{w} is read before it is set"))),
            _ if !cx.varies(e) => {
                let (x, d) = self.expr(e)?;
                Ok((V::Uni(x), d))
            }
            Expr::Load { buf, index } => {
                let d = self.buf_dtype(*buf)?;
                let flags = MemFlagsData::new().with_notrap();
                if let (Some(1), Some(vt)) = (cx.coeff(index), vec_type(d)) {
                    if d != DType::Bool {
                        let addr = self.address(*buf, index)?;
                        return Ok((V::Vec(self.b.ins().load(vt, flags, addr, 0)), d));
                    }
                }
                let i = self.vexpr(index, cx, env)?;
                let is = self.index_lanes(i)?;
                let ty = super::cl_type(d).expect("buffer dtypes were checked");
                let mut ls = is;
                for (l, x) in ls.iter_mut().enumerate() {
                    let addr = self.address_at(*buf, is[l])?;
                    *x = self.b.ins().load(ty, flags, addr, 0);
                }
                Ok((V::Lanes(ls), d))
            }
            Expr::Op { op, args, dtype } => {
                if let Some(x) = self.narrow_round_trip(op, args, *dtype, cx, env)? {
                    return Ok((V::Vec(x), *dtype));
                }
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.vexpr(a, cx, env)?);
                }
                if let Some(x) = self.vnative(op, &vals, *dtype)? {
                    return Ok((V::Vec(x), *dtype));
                }
                // Lane by lane, with the scalar lowering.
                #[cfg(test)]
                LANEWISE.with(|c| c.set(c.get() + 1));
                let lanes: Vec<[Value; W]> = vals.iter().map(|&x| self.lanes_of(x)).collect();
                let Some(first) = lanes.first() else {
                    return Err(self.invalid("an op without operands"));
                };
                let mut out = [first[0]; W];
                for (l, o) in out.iter_mut().enumerate() {
                    let lane: Vec<(Value, DType)> =
                        lanes.iter().zip(&vals).map(|(x, v)| (x[l], v.1)).collect();
                    *o = self.apply(op, &lane, *dtype)?;
                }
                Ok((V::Lanes(out), *dtype))
            }
            Expr::Int(..) | Expr::Float(..) | Expr::Dim(_) | Expr::Var(_) => {
                unreachable!("uniform")
            }
        }
    }

    /// An f32 converted to an 8- or 16-bit integer and straight on to f32, i32 or u32 (a
    /// quantizer's rounding trip), in 32-bit lanes: the saturating conversion to i32 clamped
    /// to the narrow type's range is the value the narrow cast holds (NaN still 0), which
    /// the outer cast then widens. `None` for any other expression.
    fn narrow_round_trip(
        &mut self,
        op: &Op,
        args: &[Expr],
        to: DType,
        cx: &Cx,
        env: &HashMap<VarId, (V, DType)>,
    ) -> R<Option<Value>> {
        let (Op::Cast { .. }, [inner]) = (op, args) else {
            return Ok(None);
        };
        let Expr::Op {
            op: Op::Cast { .. },
            args: narrow_args,
            dtype: narrow,
        } = inner
        else {
            return Ok(None);
        };
        let (lo, hi) = match narrow {
            DType::U8 => (0, 255),
            DType::I8 => (-128, 127),
            DType::U16 => (0, 65535),
            DType::I16 => (-32768, 32767),
            _ => return Ok(None),
        };
        let [x] = narrow_args.as_slice() else {
            return Ok(None);
        };
        // Only f32 operands (known before anything is emitted).
        let from_f32 = match x {
            Expr::Op { dtype, .. } => *dtype == DType::F32,
            Expr::Load { buf, .. } => self.buf_dtype(*buf)? == DType::F32,
            _ => false,
        };
        if !from_f32 || !matches!(to, DType::F32 | DType::I32 | DType::U32) {
            return Ok(None);
        }
        let (xv, xd) = self.vexpr(x, cx, env)?;
        let xv = self.vec_of((xv, xd), xd);
        let w = self.ins().fcvt_to_sint_sat(types::I32X4, xv);
        let (lo, hi) = (self.splat_i32(lo), self.splat_i32(hi));
        let w = self.ins().smax(w, lo);
        let w = self.ins().smin(w, hi);
        Ok(Some(if to == DType::F32 {
            self.ins().fcvt_from_sint(types::F32X4, w)
        } else {
            w
        }))
    }

    /// `x` as a native vector of `d` (which must have one).
    fn vec_of(&mut self, (x, _): (V, DType), d: DType) -> Value {
        let vt = vec_type(d).expect("a dtype with a vector form");
        let lane = |s: &mut Self, x: Value| {
            if d == DType::Bool {
                let w = s.b.ins().uextend(types::I32, x);
                s.b.ins().ineg(w)
            } else {
                x
            }
        };
        match x {
            V::Vec(x) => x,
            V::Uni(x) => {
                let x = lane(self, x);
                self.b.ins().splat(vt, x)
            }
            V::Lanes(ls) => {
                let l0 = lane(self, ls[0]);
                let mut r = self.b.ins().splat(vt, l0);
                for (i, &x) in ls.iter().enumerate().skip(1) {
                    let x = lane(self, x);
                    r = self.b.ins().insertlane(r, x, i as u8);
                }
                r
            }
        }
    }

    /// `x` as one scalar per lane.
    fn lanes_of(&mut self, (x, d): (V, DType)) -> [Value; W] {
        match x {
            V::Uni(x) => [x; W],
            V::Lanes(ls) => ls,
            V::Vec(x) => {
                let mut ls = [x; W];
                for (i, l) in ls.iter_mut().enumerate() {
                    let s = self.b.ins().extractlane(x, i as u8);
                    *l = if d == DType::Bool {
                        self.b.ins().icmp_imm_s(IntCC::NotEqual, s, 0)
                    } else {
                        s
                    };
                }
                ls
            }
        }
    }

    pub(super) fn splat_f32(&mut self, v: f32) -> Value {
        let c = self.b.ins().f32const(v);
        self.b.ins().splat(types::F32X4, c)
    }

    pub(super) fn splat_i32(&mut self, v: i32) -> Value {
        let c = self.b.ins().iconst(types::I32, i64::from(v));
        self.b.ins().splat(types::I32X4, c)
    }

    /// `op` as native vector instructions, if it has a vector form for these dtypes.
    fn vnative(&mut self, op: &Op, vals: &[(V, DType)], dtype: DType) -> R<Option<Value>> {
        use DType::{Bool, F32, I32, U32};
        if vec_type(dtype).is_none() || vals.iter().any(|v| vec_type(v.1).is_none()) {
            return Ok(None);
        }
        let ds: Vec<DType> = vals.iter().map(|v| v.1).collect();
        let fcc = |op: &Op| match op {
            Op::Eq => Some(FloatCC::Equal),
            Op::Ne => Some(FloatCC::NotEqual),
            Op::Lt => Some(FloatCC::LessThan),
            Op::Le => Some(FloatCC::LessThanOrEqual),
            Op::Gt => Some(FloatCC::GreaterThan),
            Op::Ge => Some(FloatCC::GreaterThanOrEqual),
            _ => None,
        };
        let icc = |op: &Op, signed: bool| {
            Some(match (op, signed) {
                (Op::Eq, _) => IntCC::Equal,
                (Op::Ne, _) => IntCC::NotEqual,
                (Op::Lt, true) => IntCC::SignedLessThan,
                (Op::Le, true) => IntCC::SignedLessThanOrEqual,
                (Op::Gt, true) => IntCC::SignedGreaterThan,
                (Op::Ge, true) => IntCC::SignedGreaterThanOrEqual,
                (Op::Lt, false) => IntCC::UnsignedLessThan,
                (Op::Le, false) => IntCC::UnsignedLessThanOrEqual,
                (Op::Gt, false) => IntCC::UnsignedGreaterThan,
                (Op::Ge, false) => IntCC::UnsignedGreaterThanOrEqual,
                _ => return None,
            })
        };
        // Whether this op and these dtypes have a vector form (checked before any operand is
        // converted, so that nothing is emitted for ops that go lane by lane).
        let ok = match (op, ds.as_slice(), dtype) {
            (
                Op::Neg
                | Op::Abs
                | Op::Sqrt
                | Op::Floor
                | Op::Ceil
                | Op::Round
                | Op::Recip
                | Op::Rsqrt
                | Op::Exp
                | Op::Log
                | Op::Sigmoid
                | Op::Tanh
                | Op::Erf,
                [F32],
                F32,
            ) => true,
            (Op::IsNan | Op::IsInf, [F32], Bool) => true,
            (Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min, [F32, F32], F32) => true,
            (o, [F32, F32], Bool) if fcc(o).is_some() => true,
            (
                Op::Add | Op::Sub | Op::Mul | Op::And | Op::Or | Op::Xor | Op::Max | Op::Min,
                [a, b],
                d,
            ) if matches!(d, I32 | U32) && *a == d && *b == d => true,
            (Op::Neg | Op::Not, [a], d) if matches!(d, I32 | U32) && *a == d => true,
            (Op::Abs, [I32], I32) => true,
            (o, [a, b], Bool) if matches!(a, I32 | U32) && a == b && icc(o, true).is_some() => true,
            (Op::And | Op::Or | Op::Xor, [Bool, Bool], Bool) => true,
            (Op::Not, [Bool], Bool) => true,
            (Op::Select, [Bool, a, b], d) if *a == d && *b == d => true,
            (Op::Cast { .. }, [from], to) => matches!(
                (from, to),
                (F32, I32 | Bool) | (I32 | U32, F32 | Bool | I32 | U32) | (Bool, F32 | I32 | U32)
            ),
            _ => false,
        };
        if !ok {
            return Ok(None);
        }
        let xs: Vec<Value> = vals.iter().map(|&(x, d)| self.vec_of((x, d), d)).collect();
        let r = match (op, ds.as_slice()) {
            (Op::IsNan, _) => self.ins().fcmp(FloatCC::Unordered, xs[0], xs[0]),
            (Op::IsInf, _) => {
                let a = self.ins().fabs(xs[0]);
                let inf = self.splat_f32(f32::INFINITY);
                self.ins().fcmp(FloatCC::Equal, a, inf)
            }
            (Op::Select, [_, d, _]) => {
                let c = if *d == F32 {
                    self.ins().bitcast(types::F32X4, le(), xs[0])
                } else {
                    xs[0]
                };
                self.ins().bitselect(c, xs[1], xs[2])
            }
            (Op::Cast { .. }, [from]) => match (*from, dtype) {
                (F32, I32) => self.ins().fcvt_to_sint_sat(types::I32X4, xs[0]),
                (F32, _) => {
                    let z = self.splat_f32(0.0);
                    self.ins().fcmp(FloatCC::NotEqual, xs[0], z)
                }
                (Bool, F32) => {
                    let one = self.splat_i32(1.0f32.to_bits() as i32);
                    let r = self.ins().band(xs[0], one);
                    self.ins().bitcast(types::F32X4, le(), r)
                }
                (Bool, _) => self.ins().ineg(xs[0]),
                (_, F32) if *from == I32 => self.ins().fcvt_from_sint(types::F32X4, xs[0]),
                // u32 to f32: exact below 2^31; above, halved (keeping the low bit, so that the
                // rounding is the same) and doubled.
                (_, F32) => {
                    let one = self.ins().iconst(types::I32, 1);
                    let half = self.ins().ushr(xs[0], one);
                    let ones = self.splat_i32(1);
                    let low = self.ins().band(xs[0], ones);
                    let half = self.ins().bor(half, low);
                    let h = self.ins().fcvt_from_sint(types::F32X4, half);
                    let big = self.ins().fadd(h, h);
                    let small = self.ins().fcvt_from_sint(types::F32X4, xs[0]);
                    let zero = self.splat_i32(0);
                    let neg = self.ins().icmp(IntCC::SignedLessThan, xs[0], zero);
                    let neg = self.ins().bitcast(types::F32X4, le(), neg);
                    self.ins().bitselect(neg, big, small)
                }
                (_, Bool) => {
                    let z = self.splat_i32(0);
                    self.ins().icmp(IntCC::NotEqual, xs[0], z)
                }
                // Between i32 and u32: the same bits.
                _ => xs[0],
            },
            (_, [F32]) => match op {
                Op::Neg => self.ins().fneg(xs[0]),
                Op::Abs => self.ins().fabs(xs[0]),
                Op::Sqrt => self.ins().sqrt(xs[0]),
                Op::Floor => self.ins().floor(xs[0]),
                Op::Ceil => self.ins().ceil(xs[0]),
                Op::Round => self.ins().nearest(xs[0]),
                Op::Recip => {
                    let one = self.splat_f32(1.0);
                    self.ins().fdiv(one, xs[0])
                }
                Op::Rsqrt => self.vrsqrt(xs[0]),
                Op::Exp => self.vexp(xs[0]),
                Op::Log => self.vlog(xs[0]),
                Op::Sigmoid => self.vsigmoid(xs[0]),
                Op::Erf => self.verf(xs[0]),
                _ => self.vtanh(xs[0]),
            },
            (_, [F32, F32]) => match op {
                Op::Add => self.ins().fadd(xs[0], xs[1]),
                Op::Sub => self.ins().fsub(xs[0], xs[1]),
                Op::Mul => self.ins().fmul(xs[0], xs[1]),
                Op::Div => self.ins().fdiv(xs[0], xs[1]),
                // As the scalar code: NaN if either is NaN, -0 < +0.
                Op::Max => self.ins().fmax(xs[0], xs[1]),
                Op::Min => self.ins().fmin(xs[0], xs[1]),
                o => {
                    let cc = fcc(o).expect("checked above");
                    self.ins().fcmp(cc, xs[0], xs[1])
                }
            },
            (_, [Bool, Bool]) => match op {
                Op::And => self.ins().band(xs[0], xs[1]),
                Op::Or => self.ins().bor(xs[0], xs[1]),
                _ => self.ins().bxor(xs[0], xs[1]),
            },
            (Op::Not, _) => self.ins().bnot(xs[0]),
            (Op::Neg, _) => self.ins().ineg(xs[0]),
            (Op::Abs, _) => self.ins().iabs(xs[0]),
            (_, [a, _]) => {
                let signed = *a == I32;
                let (x, y) = (xs[0], xs[1]);
                match op {
                    Op::Add => self.ins().iadd(x, y),
                    Op::Sub => self.ins().isub(x, y),
                    Op::Mul => self.ins().imul(x, y),
                    Op::And => self.ins().band(x, y),
                    Op::Or => self.ins().bor(x, y),
                    Op::Xor => self.ins().bxor(x, y),
                    Op::Max if signed => self.ins().smax(x, y),
                    Op::Max => self.ins().umax(x, y),
                    Op::Min if signed => self.ins().smin(x, y),
                    Op::Min => self.ins().umin(x, y),
                    o => {
                        let cc = icc(o, signed).expect("checked above");
                        self.ins().icmp(cc, x, y)
                    }
                }
            }
            _ => unreachable!("checked above"),
        };
        Ok(Some(r))
    }
}
