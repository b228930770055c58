//! The epilogue in 8-lane AVX2 registers, the same bits as the AVX-512 code and the scalar
//! `Epilogue::one`.

use super::{Act, Coefs, Epilogue, Quant, ERF_BIG, ERF_SMALL, SIXTH, SQRT2, TANH};
use crate::routines::rows::avx2::{exp8, key};
use std::arch::x86_64::*;

/// [`super::avx512::coefs`] for 8 lanes (`m` the mask of lanes inside).
///
/// # Safety
/// AVX2 available; as [`super::avx512::coefs`].
#[inline(always)]
pub(in crate::routines) unsafe fn coefs(
    e: &Epilogue,
    i: usize,
    j: usize,
    m: __m256i,
) -> Coefs<__m256> {
    // SAFETY: forwarded.
    unsafe {
        (
            coef(e, e.scale, (i, j), m),
            coef(e, e.shift, (i, j), m),
            coef(e, e.scale2, (i, j), m),
        )
    }
}

/// [`super::avx512::coef`] for 8 lanes.
///
/// # Safety
/// As [`coefs`].
#[inline(always)]
unsafe fn coef(e: &Epilogue, p: *const f32, (i, j): (usize, usize), m: __m256i) -> Option<__m256> {
    if p.is_null() {
        return None;
    }
    // SAFETY: forwarded.
    unsafe {
        Some(if e.cols {
            _mm256_maskload_ps(p.add(j), m)
        } else {
            _mm256_set1_ps(*p.add(i))
        })
    }
}

/// [`super::avx512::quick`] for 8 lanes.
///
/// # Safety
/// AVX2 available; as [`super::avx512::quick`].
#[inline(always)]
pub(in crate::routines) unsafe fn quick<const CLAMP: bool, const RES: bool, const A: i64>(
    e: &Epilogue,
    st: Coefs<__m256>,
    (n, step): (usize, usize),
    v: impl Fn(usize) -> __m256,
    out: *mut f32,
) {
    // SAFETY: the CPU has AVX2; the outputs and residual are inside their buffers.
    unsafe {
        let (st, bounds) = (quick_coefs(st), quick_bounds(e));
        for p in 0..n {
            let r = e.res.wrapping_add(p * step);
            let x = quick_one::<CLAMP, RES>(v(p), st, bounds, r);
            _mm256_storeu_ps(out.add(p * step), activate(Act::of(A), x));
        }
    }
}

/// [`super::avx512::quick_coefs`] for 8 lanes.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_coefs((s, t, _): Coefs<__m256>) -> (__m256, __m256) {
    // SAFETY: only called from AVX2 code.
    unsafe {
        (
            s.unwrap_or(_mm256_set1_ps(1.0)),
            t.unwrap_or(_mm256_set1_ps(-0.0)),
        )
    }
}

/// [`super::avx512::quick_bounds`] for 8 lanes.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_bounds(e: &Epilogue) -> (__m256, __m256) {
    // SAFETY: only called from AVX2 code.
    unsafe { (_mm256_set1_ps(e.lo), _mm256_set1_ps(e.hi)) }
}

/// [`super::avx512::quick_one`] for 8 lanes, all of them.
///
/// # Safety
/// AVX2 available; with `RES`, 8 values readable from `r`.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_one<const CLAMP: bool, const RES: bool>(
    v: __m256,
    (s, t): (__m256, __m256),
    (lo, hi): (__m256, __m256),
    r: *const f32,
) -> __m256 {
    // SAFETY: the CPU has AVX2; the residual's lanes are readable.
    unsafe {
        let mut x = _mm256_add_ps(_mm256_mul_ps(v, s), t);
        if RES {
            x = _mm256_add_ps(x, _mm256_loadu_ps(r));
        }
        if CLAMP {
            let c = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
            x = _mm256_blendv_ps(c, _mm256_set1_ps(f32::NAN), nan);
        }
        x
    }
}

/// [`super::avx512::apply`] for 8 lanes: `m` the mask of lanes inside (all ones for 8).
///
/// # Safety
/// AVX2 available; with a residual, the lanes in `m` readable from `r`.
#[inline(always)]
pub(in crate::routines) unsafe fn apply(
    e: &Epilogue,
    mut v: __m256,
    (s, t, s2): Coefs<__m256>,
    r: *const f32,
    m: __m256i,
) -> __m256 {
    // SAFETY: the CPU has AVX2; the residual's lanes are readable.
    unsafe {
        let (first, second) = e.pre_pairs();
        if let (true, Some(t)) = (e.shift_first, t) {
            v = _mm256_add_ps(v, t);
        }
        if let Some(q) = first {
            v = quant(q, v);
        }
        if let Some(s) = s {
            v = _mm256_mul_ps(v, s);
        }
        if let Some(q) = second {
            v = quant(q, v);
        }
        if let Some(s2) = s2 {
            v = _mm256_mul_ps(v, s2);
        }
        if let (false, Some(t)) = (e.shift_first, t) {
            v = _mm256_add_ps(v, t);
        }
        if !e.res.is_null() {
            v = _mm256_add_ps(v, _mm256_maskload_ps(r, m));
        }
        if e.lo != f32::NEG_INFINITY {
            v = extreme(v, e.lo, false);
        }
        if e.hi != f32::INFINITY {
            v = extreme(v, e.hi, true);
        }
        let v = activate(e.act, v);
        match &e.post {
            Some(q) => quant(q, v),
            None => v,
        }
    }
}

/// [`apply`] to a run of vectors without a residual (`vs`, their coefficients the same:
/// per column), a step at a time over the whole run: each loop one operation, with nothing
/// decided inside it, where vector by vector every step's test and the spills between them
/// were most of a per-column epilogue's time (a QDQ conv's results on AVX2).
///
/// # Safety
/// AVX2 and FMA available; `e` has no residual.
#[inline(always)]
pub(in crate::routines) unsafe fn apply_run(
    e: &Epilogue,
    (s, t, s2): Coefs<__m256>,
    vs: &mut [__m256],
) {
    debug_assert!(e.res.is_null());
    // Each step's loop written out here, not a closure: a closure's body is a function of
    // its own, without AVX2, whose intrinsics were calls (a GELU's run four times slower
    // than vector by vector).
    macro_rules! each {
        ($vs:ident, |$v:ident| $step:expr) => {
            for x in $vs.iter_mut() {
                let $v = *x;
                *x = $step;
            }
        };
    }
    // SAFETY: the CPU has AVX2 and FMA.
    unsafe {
        let (first, second) = e.pre_pairs();
        if let (true, Some(t)) = (e.shift_first, t) {
            each!(vs, |v| _mm256_add_ps(v, t));
        }
        if let Some(q) = first {
            each!(vs, |v| quant(q, v));
        }
        if let Some(s) = s {
            each!(vs, |v| _mm256_mul_ps(v, s));
        }
        if let Some(q) = second {
            each!(vs, |v| quant(q, v));
        }
        if let Some(s2) = s2 {
            each!(vs, |v| _mm256_mul_ps(v, s2));
        }
        if let (false, Some(t)) = (e.shift_first, t) {
            each!(vs, |v| _mm256_add_ps(v, t));
        }
        if e.lo != f32::NEG_INFINITY {
            each!(vs, |v| extreme(v, e.lo, false));
        }
        if e.hi != f32::INFINITY {
            each!(vs, |v| extreme(v, e.hi, true));
        }
        if e.act != Act::Identity {
            each!(vs, |v| activate(e.act, v));
        }
        if let Some(q) = &e.post {
            each!(vs, |v| quant(q, v));
        }
    }
}

/// [`super::avx512::quant`] for 8 lanes.
#[inline(always)]
pub(super) fn quant(q: &Quant, v: __m256) -> __m256 {
    // As the AVX-512 `quant`. The conversion rounds as the MXCSR says: half to even, the
    // default, which kiln's vector code assumes throughout (the AVX2 row quantizers too); a
    // host that changes the rounding mode changes these bits.
    // SAFETY: only called from AVX2 code.
    unsafe {
        let t = if q.s == 1.0 {
            v
        } else {
            _mm256_div_ps(v, _mm256_set1_ps(q.s))
        };
        let (lo, hi) = (_mm256_set1_ps(q.lo - q.z), _mm256_set1_ps(q.hi - q.z));
        let c = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
        let n = _mm256_cvtepi32_ps(_mm256_cvtps_epi32(c));
        let n = if q.lo == 0.0 {
            n
        } else {
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(t, t);
            _mm256_blendv_ps(n, _mm256_set1_ps(0.0 - q.z), nan)
        };
        _mm256_mul_ps(n, _mm256_set1_ps(q.d))
    }
}

/// [`super::avx512::activate`] for 8 lanes.
///
/// # Safety
/// AVX2 and FMA available.
#[inline(always)]
pub(in crate::routines) unsafe fn activate(act: Act, v: __m256) -> __m256 {
    // SAFETY: the CPU has AVX2 and FMA.
    unsafe {
        match act {
            Act::Identity => v,
            Act::Sigmoid => sigmoid(v),
            Act::Tanh => tanh(v),
            // (Not through `activate` again: a recursive function is not inlined, and this
            // one only has the vector ISA where it is.)
            Act::Gelu | Act::GeluHalf => {
                let d = _mm256_div_ps(v, _mm256_set1_ps(SQRT2));
                let g = _mm256_mul_ps(v, _mm256_add_ps(erf(d), _mm256_set1_ps(1.0)));
                if act == Act::GeluHalf {
                    _mm256_mul_ps(g, _mm256_set1_ps(0.5))
                } else {
                    g
                }
            }
            Act::Silu => _mm256_mul_ps(v, sigmoid(v)),
            Act::HardSwish => {
                let t = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(SIXTH)), _mm256_set1_ps(0.5));
                let t = _mm256_min_ps(t, _mm256_set1_ps(1.0));
                _mm256_mul_ps(v, _mm256_max_ps(t, _mm256_setzero_ps()))
            }
            Act::HardSigmoid => {
                // As the AVX-512 code: t second, so a NaN stays.
                let t = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(SIXTH)), _mm256_set1_ps(0.5));
                let t = _mm256_min_ps(_mm256_set1_ps(1.0), t);
                _mm256_max_ps(_mm256_setzero_ps(), t)
            }
            Act::HardSwishRelu6 | Act::HardSwishRelu6Scaled => {
                // As the AVX-512 code.
                let t = _mm256_add_ps(v, _mm256_set1_ps(3.0));
                let t = _mm256_max_ps(_mm256_setzero_ps(), t);
                let t = _mm256_mul_ps(v, _mm256_min_ps(_mm256_set1_ps(6.0), t));
                match act {
                    Act::HardSwishRelu6 => _mm256_div_ps(t, _mm256_set1_ps(6.0)),
                    _ => _mm256_mul_ps(t, _mm256_set1_ps(SIXTH)),
                }
            }
        }
    }
}

/// Horner's rule with fused multiply-adds.
#[inline(always)]
unsafe fn poly(coefs: &[f32], x: __m256) -> __m256 {
    // SAFETY: only called from AVX2 code.
    unsafe {
        let mut p = _mm256_set1_ps(coefs[0]);
        for &c in &coefs[1..] {
            p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c));
        }
        p
    }
}

/// [`super::avx512`]'s `erf` for 8 lanes.
#[inline(always)]
unsafe fn erf(x: __m256) -> __m256 {
    // SAFETY: only called from AVX2 code.
    unsafe {
        let small = _mm256_add_ps(x, _mm256_mul_ps(x, poly(&ERF_SMALL, _mm256_mul_ps(x, x))));
        let a = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(0.921_875));
        if _mm256_movemask_ps(is_small) == 0xFF {
            return small;
        }
        let four = _mm256_set1_ps(4.0);
        let t = _mm256_blendv_ps(a, four, _mm256_cmp_ps::<_CMP_LT_OQ>(four, a));
        let q = poly(&ERF_BIG, _mm256_sub_ps(t, _mm256_set1_ps(2.460_937_5)));
        let nt2 = _mm256_xor_ps(_mm256_mul_ps(t, t), _mm256_set1_ps(-0.0));
        let eq = _mm256_mul_ps(exp8(nt2), q);
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let big = _mm256_or_ps(_mm256_sub_ps(_mm256_set1_ps(1.0), eq), sign);
        _mm256_blendv_ps(big, small, is_small)
    }
}

/// [`super::avx512`]'s `extreme` for 8 lanes.
#[inline(always)]
unsafe fn extreme(v: __m256, c: f32, min: bool) -> __m256 {
    // SAFETY: only called from AVX2 code.
    unsafe {
        let cv = _mm256_set1_ps(c);
        if super::plain(c, min) {
            let r = if min {
                _mm256_min_ps(v, cv)
            } else {
                _mm256_max_ps(v, cv)
            };
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            return _mm256_blendv_ps(r, _mm256_set1_ps(f32::NAN), nan);
        }
        let k = if min {
            _mm256_min_epi32(key(v), key(cv))
        } else {
            _mm256_max_epi32(key(v), key(cv))
        };
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, cv);
        let back = _mm256_castsi256_ps(key(_mm256_castsi256_ps(k)));
        _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan)
    }
}

/// [`super::avx512`]'s `sigmoid` for 8 lanes.
#[inline(always)]
pub(in crate::routines) unsafe fn sigmoid(x: __m256) -> __m256 {
    // SAFETY: only called from AVX2 code.
    unsafe {
        let a = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
        let e = exp8(_mm256_xor_ps(a, _mm256_set1_ps(-0.0)));
        let one = _mm256_set1_ps(1.0);
        let d = _mm256_add_ps(one, e);
        let pos = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
        _mm256_div_ps(_mm256_blendv_ps(e, one, pos), d)
    }
}

/// [`super::avx512`]'s `tanh` for 8 lanes.
#[inline(always)]
pub(in crate::routines) unsafe fn tanh(x: __m256) -> __m256 {
    // SAFETY: only called from AVX2 code.
    unsafe {
        let abs = |v: __m256| _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
        let z = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(TANH[0]);
        for &c in &TANH[1..] {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
        }
        let small = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, z), x), x);
        let a = abs(x);
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let small = _mm256_or_ps(abs(small), sign);
        let e = exp8(_mm256_add_ps(a, a));
        let one = _mm256_set1_ps(1.0);
        let q = _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one));
        let big = _mm256_or_ps(_mm256_sub_ps(one, q), sign);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(0.625));
        _mm256_blendv_ps(big, small, is_small)
    }
}

/// Stores the lanes of `v` in `m` at `p`: a plain store when `full` (AMD's masked stores are
/// microcoded, many times slower: they had the epilogue's pass at 12% of a conv model).
///
/// # Safety
/// AVX2 available; the lanes in `m` (all with `full`) writable at `p`.
#[inline(always)]
pub(in crate::routines) unsafe fn store(p: *mut f32, m: __m256i, full: bool, v: __m256) {
    // SAFETY: forwarded.
    unsafe {
        if full {
            _mm256_storeu_ps(p, v);
        } else {
            _mm256_maskstore_ps(p, m, v);
        }
    }
}

/// [`Epilogue::block`] in 8-lane registers.
///
/// # Safety
/// As [`Epilogue::block`]; the CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block(
    e: &Epilogue,
    (r0, c0, a0): (usize, usize, usize),
    c: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for i in 0..rows {
        let mut j = 0;
        while j < cols {
            let n = (cols - j).min(8);
            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
            let at = i * ld + j;
            // SAFETY: (i, j..j + n) is inside the block and its operands.
            unsafe {
                let p = c.add(at);
                let v = if n == 8 {
                    _mm256_loadu_ps(p)
                } else {
                    _mm256_maskload_ps(p, m)
                };
                let st = coefs(e, r0 + i, c0 + j, m);
                let v = apply(e, v, st, e.res.wrapping_add(a0 + at), m);
                store(p, m, n == 8, v);
            }
            j += 8;
        }
    }
}
