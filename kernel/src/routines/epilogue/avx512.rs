//! The epilogue in 16-lane AVX-512 registers: scale, shift, residual, clamps and activations of
//! a run of outputs, the same bits as the scalar `Epilogue::one`.

use super::{Act, Coefs, Epilogue, Quant, ERF_BIG, ERF_SMALL, SIXTH, SQRT2, TANH};
use crate::routines::rows::avx512::{exp16, key};
use std::arch::x86_64::*;

/// Scale, shift and second-scale vectors for the 16 outputs of row `i` from column `j`
/// (lanes in `m`).
///
/// # Safety
/// AVX-512F available; row `i` (columns `j..` in `m`) inside the per-row (per-column)
/// operands.
#[inline(always)]
pub(in crate::routines) unsafe fn coefs(
    e: &Epilogue,
    i: usize,
    j: usize,
    m: __mmask16,
) -> Coefs<__m512> {
    // SAFETY: forwarded.
    unsafe {
        (
            coef(e, e.scale, (i, j), m),
            coef(e, e.shift, (i, j), m),
            coef(e, e.scale2, (i, j), m),
        )
    }
}

/// One of [`coefs`]: per-row or per-column operand `p` at row `i`, column `j`. A function
/// of its own rather than a closure, which LLVM may leave out of line (without the
/// caller's features: vectors through memory).
///
/// # Safety
/// As [`coefs`].
#[inline(always)]
unsafe fn coef(
    e: &Epilogue,
    p: *const f32,
    (i, j): (usize, usize),
    m: __mmask16,
) -> Option<__m512> {
    if p.is_null() {
        return None;
    }
    // SAFETY: forwarded.
    unsafe {
        Some(if e.cols {
            _mm512_maskz_loadu_ps(m, p.add(j))
        } else {
            _mm512_set1_ps(*p.add(i))
        })
    }
}

/// The epilogue on 16 outputs `v` (scale and shift `s`, `t`; lanes in `m`), whose residual
/// is at `r`.
///
/// # Safety
/// AVX-512F available; with a residual, the lanes in `m` readable from `r`.
#[inline(always)]
pub(in crate::routines) unsafe fn apply(
    e: &Epilogue,
    v: __m512,
    (s, t, s2): Coefs<__m512>,
    r: *const f32,
    m: __mmask16,
) -> __m512 {
    // SAFETY: forwarded.
    let v = unsafe { linear(e, v, (s, t, s2), r, m) };
    // SAFETY: the CPU has AVX-512F.
    let v = unsafe { activate(e.act, v) };
    match &e.post {
        Some(q) => quant(q, v),
        None => v,
    }
}

/// A quantize-dequantize pair on 16 lanes: the same bits as [`Quant::one`].
#[inline(always)]
pub(in crate::routines) fn quant(q: &Quant, v: __m512) -> __m512 {
    // `x/s` clamped to `lo − z ..= hi − z`, rounded half to even by the integer conversion,
    // times `d`: the same bits as rounding, adding `z`, clamping to `lo..=hi` and taking `z`
    // away (the bounds and `z` integers within 2^16: clamping commutes with rounding to an
    // integer, and `c − z` is exact; a zero is +0 both ways, the conversion's and `z − z`'s)
    // in two fewer instructions. A QDQ conv's two pairs a vector are much of its stores'
    // work: cnn_dsc_qdq 2.18 → 2.04 ms at one thread.
    // SAFETY: only called from AVX-512 code.
    unsafe {
        // (A requantizer's divisor of 1 divides nothing: what the conversion reads is the
        // same, NaN included.)
        let t = if q.s == 1.0 {
            v
        } else {
            _mm512_div_ps(v, _mm512_set1_ps(q.s))
        };
        // The hardware's maximum answers its second operand, `lo − z`, for a NaN: made
        // `0 − z` after (already so where `lo` is 0).
        let (lo, hi) = (_mm512_set1_ps(q.lo - q.z), _mm512_set1_ps(q.hi - q.z));
        let c = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
        let n = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c);
        let n = _mm512_cvtepi32_ps(n);
        let n = if q.lo == 0.0 {
            n
        } else {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t, t);
            _mm512_mask_mov_ps(n, nan, _mm512_set1_ps(0.0 - q.z))
        };
        _mm512_mul_ps(n, _mm512_set1_ps(q.d))
    }
}

/// Activation `act` of 16 lanes (the last step of [`apply`]).
///
/// # Safety
/// AVX-512F available.
#[inline(always)]
pub(in crate::routines) unsafe fn activate(act: Act, v: __m512) -> __m512 {
    // SAFETY: the CPU has AVX-512F.
    unsafe {
        match act {
            Act::Identity => v,
            Act::Sigmoid => sigmoid(v),
            Act::Tanh => tanh(v),
            // (Not through `activate` again: a recursive function is not inlined, and this
            // one only has the vector ISA where it is.)
            Act::Gelu | Act::GeluHalf => {
                let d = _mm512_div_ps(v, _mm512_set1_ps(SQRT2));
                let g = _mm512_mul_ps(v, _mm512_add_ps(erf(d), _mm512_set1_ps(1.0)));
                if act == Act::GeluHalf {
                    _mm512_mul_ps(g, _mm512_set1_ps(0.5))
                } else {
                    g
                }
            }
            Act::Silu => _mm512_mul_ps(v, sigmoid(v)),
            Act::HardSwish => {
                // The hardware's minimum and maximum: where t is NaN, v is, and the
                // product is v's NaN either way; t is never −0.
                let t = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(SIXTH)), _mm512_set1_ps(0.5));
                let t = _mm512_min_ps(t, _mm512_set1_ps(1.0));
                _mm512_mul_ps(v, _mm512_max_ps(t, _mm512_setzero_ps()))
            }
            Act::HardSigmoid => {
                // The hardware's minimum and maximum return their second operand where
                // one is NaN: t second, so a NaN stays (t is never −0).
                let t = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(SIXTH)), _mm512_set1_ps(0.5));
                let t = _mm512_min_ps(_mm512_set1_ps(1.0), t);
                _mm512_max_ps(_mm512_setzero_ps(), t)
            }
            Act::HardSwishRelu6 | Act::HardSwishRelu6Scaled => {
                // t second again (a NaN stays); x + 3 is never −0.
                let t = _mm512_add_ps(v, _mm512_set1_ps(3.0));
                let t = _mm512_max_ps(_mm512_setzero_ps(), t);
                let t = _mm512_mul_ps(v, _mm512_min_ps(_mm512_set1_ps(6.0), t));
                match act {
                    Act::HardSwishRelu6 => _mm512_div_ps(t, _mm512_set1_ps(6.0)),
                    _ => _mm512_mul_ps(t, _mm512_set1_ps(SIXTH)),
                }
            }
        }
    }
}

/// [`apply`] on `n` vectors `v(p)` of 16 outputs each, stored to `out` and read from the
/// residual `step` elements apart, for an epilogue [`Epilogue::quick_linear`] accepts
/// with the decisions `CLAMP`, `RES` and `A` ([`Quick`]), whose scale and shift for these
/// lanes are `s` and `t`: the same bits as [`apply`], every decision taken before.
///
/// # Safety
/// AVX-512F available; the `n` vectors writable at `out` and readable at the residual.
#[inline(always)]
pub(in crate::routines) unsafe fn quick<const CLAMP: bool, const RES: bool, const A: i64>(
    e: &Epilogue,
    st: Coefs<__m512>,
    (n, step): (usize, usize),
    v: impl Fn(usize) -> __m512,
    out: *mut f32,
) {
    // SAFETY: the CPU has AVX-512F; the outputs and residual are inside their buffers.
    unsafe {
        let (st, bounds) = (quick_coefs(st), quick_bounds(e));
        for p in 0..n {
            let r = e.res.wrapping_add(p * step);
            let x = quick_one::<CLAMP, RES>(v(p), st, bounds, r, !0);
            _mm512_storeu_ps(out.add(p * step), activate(Act::of(A), x));
        }
    }
}

/// [`quick`] for the `n` vectors `v(p)` of one run (`step` apart from `out`), epilogue `e`
/// being this run's (see `Epilogue::from`: its per-column operands and residual start at
/// these outputs) and `clamp` [`Epilogue::quick_linear`]'s answer: every decision taken once
/// for the run (`super::decide`).
///
/// # Safety
/// As [`quick`].
#[inline(always)]
pub(in crate::routines) unsafe fn quick_run(
    e: &Epilogue,
    clamp: bool,
    ns: (usize, usize),
    v: impl Fn(usize) -> __m512,
    out: *mut f32,
) {
    /// The run, for `decide`.
    struct Run<'a, V> {
        e: &'a Epilogue,
        ns: (usize, usize),
        v: V,
        out: *mut f32,
    }
    impl<V: Fn(usize) -> __m512> super::Quick for Run<'_, V> {
        #[inline(always)]
        unsafe fn run<const CLAMP: bool, const RES: bool, const A: i64>(self) {
            // SAFETY: forwarded; the CPU has AVX-512F.
            unsafe {
                let coefs = coefs(self.e, 0, 0, !0);
                quick::<CLAMP, RES, A>(self.e, coefs, self.ns, self.v, self.out);
            }
        }
    }
    // SAFETY: forwarded.
    unsafe { super::decide(e, clamp, Run { e, ns, v, out }) };
}

/// A quick epilogue's scale and shift: multiplying by 1 and adding −0 change no number,
/// so absent operands are those.
///
/// # Safety
/// AVX-512F available.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_coefs((s, t, _): Coefs<__m512>) -> (__m512, __m512) {
    // SAFETY: the CPU has AVX-512F.
    unsafe {
        (
            s.unwrap_or(_mm512_set1_ps(1.0)),
            t.unwrap_or(_mm512_set1_ps(-0.0)),
        )
    }
}

/// A quick epilogue's clamps as vectors (an absent one, ±inf, changes no number).
///
/// # Safety
/// AVX-512F available.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_bounds(e: &Epilogue) -> (__m512, __m512) {
    // SAFETY: the CPU has AVX-512F.
    unsafe { (_mm512_set1_ps(e.lo), _mm512_set1_ps(e.hi)) }
}

/// [`quick`]'s 16 outputs `v` (lanes in `m`), scale and shift `s`, `t` and clamps from
/// [`quick_coefs`] and [`quick_bounds`], residual at `r`.
///
/// # Safety
/// AVX-512F available; with `RES`, the lanes in `m` readable from `r`.
#[inline(always)]
pub(in crate::routines) unsafe fn quick_one<const CLAMP: bool, const RES: bool>(
    v: __m512,
    (s, t): (__m512, __m512),
    (lo, hi): (__m512, __m512),
    r: *const f32,
    m: __mmask16,
) -> __m512 {
    // SAFETY: the CPU has AVX-512F; the residual's lanes are readable.
    unsafe {
        let mut x = _mm512_add_ps(_mm512_mul_ps(v, s), t);
        if RES {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, r));
        }
        if CLAMP {
            // As `linear`'s two clamps.
            let c = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            x = _mm512_mask_mov_ps(c, nan, _mm512_set1_ps(f32::NAN));
        }
        x
    }
}

/// [`apply`] but for the activation and the pair after it: the pair before, scale, shift,
/// residual and clamps.
///
/// # Safety
/// As [`apply`].
#[inline(always)]
pub(in crate::routines) unsafe fn linear(
    e: &Epilogue,
    mut v: __m512,
    (s, t, s2): Coefs<__m512>,
    r: *const f32,
    m: __mmask16,
) -> __m512 {
    // SAFETY: the CPU has AVX-512F; the residual's lanes are readable.
    unsafe {
        let (first, second) = e.pre_pairs();
        if let (true, Some(t)) = (e.shift_first, t) {
            v = _mm512_add_ps(v, t);
        }
        if let Some(q) = first {
            v = quant(q, v);
        }
        if let Some(s) = s {
            v = _mm512_mul_ps(v, s);
        }
        if let Some(q) = second {
            v = quant(q, v);
        }
        if let Some(s2) = s2 {
            v = _mm512_mul_ps(v, s2);
        }
        if let (false, Some(t)) = (e.shift_first, t) {
            v = _mm512_add_ps(v, t);
        }
        if !e.res.is_null() {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r));
        }
        let (lo, hi) = (e.lo != f32::NEG_INFINITY, e.hi != f32::INFINITY);
        if lo && hi && super::plain(e.lo, false) && super::plain(e.hi, true) {
            // Both clamps (ReLU6, Clip) by the hardware's maximum and minimum, NaN lanes
            // patched once: what the two `extreme`s give, in two fewer instructions.
            let r = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(e.lo)), _mm512_set1_ps(e.hi));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            return _mm512_mask_mov_ps(r, nan, _mm512_set1_ps(f32::NAN));
        }
        if lo {
            v = extreme(v, e.lo, false);
        }
        if hi {
            v = extreme(v, e.hi, true);
        }
        v
    }
}

/// Horner's rule with fused multiply-adds.
#[inline(always)]
fn poly(coefs: &[f32], x: __m512) -> __m512 {
    // SAFETY: only called from AVX-512 code.
    unsafe {
        let mut p = _mm512_set1_ps(coefs[0]);
        for &c in &coefs[1..] {
            p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c));
        }
        p
    }
}

/// The vector loops' `erf` (both pieces, then each lane's).
#[inline(always)]
fn erf(x: __m512) -> __m512 {
    // SAFETY: only called from AVX-512 code.
    unsafe {
        let small = _mm512_add_ps(x, _mm512_mul_ps(x, poly(&ERF_SMALL, _mm512_mul_ps(x, x))));
        let a = _mm512_abs_ps(x);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.921_875));
        if is_small == !0 {
            return small;
        }
        let four = _mm512_set1_ps(4.0);
        let t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(four, a), a, four);
        let q = poly(&ERF_BIG, _mm512_sub_ps(t, _mm512_set1_ps(2.460_937_5)));
        let nt2 = bits(
            _mm512_mul_ps(t, t),
            _mm512_set1_epi32(i32::MIN),
            _mm512_xor_si512,
        );
        let eq = _mm512_mul_ps(exp16(nt2), q);
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let big = bits(
            _mm512_sub_ps(_mm512_set1_ps(1.0), eq),
            sign,
            _mm512_or_si512,
        );
        _mm512_mask_blend_ps(is_small, big, small)
    }
}

/// IEEE maximum (or `min`imum) of each lane and `c`: NaN where either is. The hardware's
/// max (min) answers `c` for equal operands, which is IEEE's but for a zero of the other
/// sign: where `c` is not the zero that could lose (−0 for max, +0 for min) it is used,
/// NaN lanes patched; else ordered integer keys.
#[inline(always)]
fn extreme(v: __m512, c: f32, min: bool) -> __m512 {
    // SAFETY: only called from AVX-512 code.
    unsafe {
        let cv = _mm512_set1_ps(c);
        if super::plain(c, min) {
            let r = if min {
                _mm512_min_ps(v, cv)
            } else {
                _mm512_max_ps(v, cv)
            };
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            return _mm512_mask_mov_ps(r, nan, _mm512_set1_ps(f32::NAN));
        }
        let k = if min {
            _mm512_min_epi32(key(v), key(cv))
        } else {
            _mm512_max_epi32(key(v), key(cv))
        };
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, cv);
        let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(k)));
        _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN))
    }
}

/// The vector loops' `sigmoid`: `e = exp(-|x|)`, then `1 / (1 + e)` for `x >= 0` and
/// `e / (1 + e)` otherwise.
#[inline(always)]
pub(in crate::routines) fn sigmoid(x: __m512) -> __m512 {
    // SAFETY: only called from AVX-512 code.
    unsafe {
        let a = _mm512_abs_ps(x);
        let e = exp16(bits(a, _mm512_set1_epi32(i32::MIN), _mm512_xor_si512));
        let one = _mm512_set1_ps(1.0);
        let d = _mm512_add_ps(one, e);
        let pos = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_setzero_ps());
        _mm512_div_ps(_mm512_mask_blend_ps(pos, e, one), d)
    }
}

/// The vector loops' `tanh`: the odd polynomial below 0.625, `1 - 2 / (exp(2|x|) + 1)`
/// beyond, each with the sign of x.
#[inline(always)]
pub(in crate::routines) fn tanh(x: __m512) -> __m512 {
    // SAFETY: only called from AVX-512 code.
    unsafe {
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(TANH[0]);
        for &c in &TANH[1..] {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c));
        }
        let small = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, z), x), x);
        let a = _mm512_abs_ps(x);
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let small = bits(_mm512_abs_ps(small), sign, _mm512_or_si512);
        let e = exp16(_mm512_add_ps(a, a));
        let one = _mm512_set1_ps(1.0);
        let q = _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one));
        let big = bits(_mm512_sub_ps(one, q), sign, _mm512_or_si512);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.625));
        _mm512_mask_blend_ps(is_small, big, small)
    }
}

/// `op` on the bits of `v` and `m` (AVX-512F has the integer forms only).
#[inline(always)]
fn bits(v: __m512, m: __m512i, op: unsafe fn(__m512i, __m512i) -> __m512i) -> __m512 {
    // SAFETY: only called from AVX-512 code, with AVX-512F operations.
    unsafe { _mm512_castsi512_ps(op(_mm512_castps_si512(v), m)) }
}

/// [`Epilogue::block`] in 16-lane registers.
///
/// # Safety
/// As [`Epilogue::block`]; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block(
    e: &Epilogue,
    (r0, c0, a0): (usize, usize, usize),
    c: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    for i in 0..rows {
        let mut j = 0;
        while j < cols {
            let n = (cols - j).min(16);
            let m: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
            let at = i * ld + j;
            // SAFETY: (i, j..j + n) is inside the block and its operands.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, c.add(at));
                let st = coefs(e, r0 + i, c0 + j, m);
                let v = apply(e, v, st, e.res.wrapping_add(a0 + at), m);
                _mm512_mask_storeu_ps(c.add(at), m, v);
            }
            j += 16;
        }
    }
}
