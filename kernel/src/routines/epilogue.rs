//! What products and convolutions apply to each output as they store it (a fused epilogue):
//! `y = act(clamp((x·scale + shift) + res[at], lo, hi))` with `scale` and `shift` per row (a
//! convolution's output channel) or per column (a product's bias), every part optional — a
//! folded batch norm, a bias, a residual add, ReLU/ReLU6/Clip, a sigmoid, tanh, GELU, SiLU,
//! HardSwish (as ONNX, Paddle or Keras write it) or HardSigmoid — without a second pass over
//! the output. Operation for operation what the
//! elementwise loops it replaces compute (a multiply, then adds, each rounded; IEEE maximum and
//! minimum; the vector loops' `sigmoid` and `tanh`, built on their `exp`), in 16 or 8 lanes.

/// The activation an epilogue ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity = 0,
    Sigmoid = 1,
    Tanh = 2,
    /// `x · (erf(x / √2) + 1)`: GELU as exporters write it (its ½ folded elsewhere).
    Gelu = 3,
    /// `x · sigmoid(x)`: SiLU (Swish), SwiGLU's gate.
    Silu = 4,
    /// `x · max(min(x·(1/6) + ½, 1), 0)`: HardSwish as the ONNX importer writes it (each
    /// operation rounded, IEEE minimum and maximum).
    HardSwish = 5,
    /// `max(min(x·(1/6) + ½, 1), 0)`: HardSigmoid (a squeeze-excite's gate) as the ONNX
    /// importer writes it.
    HardSigmoid = 6,
    /// `x · min(max(x + 3, 0), 6) / 6`: HardSwish as Paddle (and PyTorch's decompositions)
    /// write it, a ReLU6 of the shifted input.
    HardSwishRelu6 = 7,
    /// `x · min(max(x + 3, 0), 6) · (1/6)`: HardSwish as Keras writes it (1/6 rounded to f32).
    HardSwishRelu6Scaled = 8,
}

/// HardSwish's slope, 1/6 rounded to f32 as the importer's constant is.
pub const SIXTH: f32 = 0.166_666_67;

impl Act {
    /// The activation of a routine's `act` argument (0 identity, 1 sigmoid, 2 tanh, 3 GELU,
    /// 4 SiLU, 5 HardSwish, 6 HardSigmoid, 7 and 8 HardSwish's ReLU6 forms; others identity).
    pub fn of(code: i64) -> Act {
        match code {
            1 => Act::Sigmoid,
            2 => Act::Tanh,
            3 => Act::Gelu,
            4 => Act::Silu,
            5 => Act::HardSwish,
            6 => Act::HardSigmoid,
            7 => Act::HardSwishRelu6,
            8 => Act::HardSwishRelu6Scaled,
            _ => Act::Identity,
        }
    }

    /// One lane of the vector loops' activation.
    pub(in crate::routines) fn one(self, x: f32) -> f32 {
        match self {
            Act::Identity => x,
            Act::Sigmoid => {
                let e = super::rows::exp(-x.abs());
                let num = if x >= 0.0 { 1.0 } else { e };
                num / (1.0 + e)
            }
            Act::Tanh => {
                let z = x * x;
                let mut p = TANH[0];
                for &c in &TANH[1..] {
                    p = p.mul_add(z, c);
                }
                let small = (p * z * x + x).abs().copysign(x);
                let q = 2.0 / (super::rows::exp(x.abs() + x.abs()) + 1.0);
                let big = (1.0 - q).copysign(x);
                // (1 - q) >= 0 here, so copysign is the vector code's OR of the sign bit.
                if x.abs() < 0.625 {
                    small
                } else {
                    big
                }
            }
            Act::Gelu => x * (erf(x / SQRT2) + 1.0),
            Act::Silu => x * Act::Sigmoid.one(x),
            Act::HardSwish => {
                let t = super::rows::minimum(x * SIXTH + 0.5, 1.0);
                x * super::rows::maximum(t, 0.0)
            }
            Act::HardSigmoid => {
                super::rows::maximum(super::rows::minimum(x * SIXTH + 0.5, 1.0), 0.0)
            }
            Act::HardSwishRelu6 | Act::HardSwishRelu6Scaled => {
                let t = super::rows::minimum(super::rows::maximum(x + 3.0, 0.0), 6.0);
                match self {
                    Act::HardSwishRelu6 => x * t / 6.0,
                    _ => x * t * SIXTH,
                }
            }
        }
    }
}

/// √2 as GELU divides by it.
const SQRT2: f32 = std::f32::consts::SQRT_2;

/// The vector loops' `erf` for |x| < 0.921875: `x + x·P(x²)`.
pub const ERF_SMALL: [f32; 7] = [
    8.397_798e-5,
    -8.149_806_5e-4,
    5.201_716e-3,
    -2.685_970_3e-2,
    1.128_370_2e-1,
    -3.761_263_5e-1,
    1.283_791_7e-1,
];

/// The vector loops' `erf` beyond: `±(1 - exp(-t²)·Q(t - 2.4609375))`, `t = min(|x|, 4)`.
pub const ERF_BIG: [f32; 9] = [
    1.280_071_4e-4,
    2.978_029e-4,
    6.767_867_6e-4,
    -6.601_632e-4,
    2.408_800_2e-3,
    -8.580_101e-3,
    2.586_160_6e-2,
    -7.632_656e-2,
    2.137_508_7e-1,
];

/// Horner's rule with fused multiply-adds.
fn poly(coefs: &[f32], x: f32) -> f32 {
    coefs[1..].iter().fold(coefs[0], |p, &c| p.mul_add(x, c))
}

/// One lane of the vector loops' `erf`.
fn erf(x: f32) -> f32 {
    let small = x + x * poly(&ERF_SMALL, x * x);
    let a = x.abs();
    if a < 0.921_875 {
        return small;
    }
    // NaN stays NaN.
    let t = if 4.0 < a { 4.0 } else { a };
    let q = poly(&ERF_BIG, t - 2.460_937_5);
    let e = super::rows::exp(-(t * t));
    (1.0 - e * q).copysign(x)
}

/// The odd polynomial of the vector loops' `tanh` for |x| < 0.625 (Cephes `tanhf`), in z = x².
pub const TANH: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

/// A fused epilogue. `row` and `col` place an output in the routine's result (a product's
/// row and column of C; a convolution's output channel as its row); `at` is its element
/// offset, at which the residual is read too.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    /// Per row (or per column with `cols`), or null for none.
    pub scale: *const f32,
    /// Per row (or per column with `cols`), or null for none.
    pub shift: *const f32,
    /// Laid out as the output, or null for none.
    pub res: *const f32,
    /// The lower clamp (-inf for none).
    pub lo: f32,
    /// The upper clamp (+inf for none).
    pub hi: f32,
    /// Whether `scale` and `shift` are per column.
    pub cols: bool,
    /// The activation last.
    pub act: Act,
}

// SAFETY: the operands are only read, and the caller keeps them alive for the call.
unsafe impl Send for Epilogue {}
unsafe impl Sync for Epilogue {}

impl Epilogue {
    /// No epilogue: outputs stored as computed.
    pub const NONE: Epilogue = Epilogue {
        scale: std::ptr::null(),
        shift: std::ptr::null(),
        res: std::ptr::null(),
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
        cols: false,
        act: Act::Identity,
    };

    /// The epilogue of a routine's arguments (`cols` nonzero for per-column operands, `act`
    /// as [`Act::of`]).
    pub fn new(
        (scale, shift, res): (*const f32, *const f32, *const f32),
        lo: f32,
        hi: f32,
        cols: i64,
        act: i64,
    ) -> Self {
        Epilogue {
            scale,
            shift,
            res,
            lo,
            hi,
            cols: cols != 0,
            act: Act::of(act),
        }
    }

    /// Whether it changes nothing.
    pub fn is_none(&self) -> bool {
        self.scale.is_null()
            && self.shift.is_null()
            && self.res.is_null()
            && self.lo == f32::NEG_INFINITY
            && self.hi == f32::INFINITY
            && self.act == Act::Identity
    }

    /// Whether the vector code may run it as a quick epilogue (`avx512::quick`): no
    /// activation, clamps (if any) that the hardware's maximum and minimum give —
    /// `Some(clamped)`; `None` for the others.
    pub fn quick(&self) -> Option<bool> {
        if self.act != Act::Identity {
            return None;
        }
        self.quick_linear()
    }

    /// [`Epilogue::quick`] whatever the activation: for the blocked conv's stores, whose
    /// quick epilogues apply the activation after (`avx512::quick`, `avx2::quick`).
    pub fn quick_linear(&self) -> Option<bool> {
        if self.lo == f32::NEG_INFINITY && self.hi == f32::INFINITY {
            return Some(false);
        }
        (plain(self.lo, false) && plain(self.hi, true)).then_some(true)
    }

    /// The epilogue of the part of the output from row `rows`, column `cols` and element `at`
    /// on.
    pub fn from(&self, rows: usize, cols: usize, at: usize) -> Epilogue {
        let by = |p: *const f32, n: usize| if p.is_null() { p } else { p.wrapping_add(n) };
        let n = if self.cols { cols } else { rows };
        Epilogue {
            scale: by(self.scale, n),
            shift: by(self.shift, n),
            res: by(self.res, at),
            ..*self
        }
    }

    /// The scale and shift of the output at row `i`, column `j` (`None` for absent ones).
    ///
    /// # Safety
    /// Row `i` (column `j` with `cols`) is inside the per-row (per-column) operands.
    #[inline(always)]
    pub(in crate::routines) unsafe fn coefs(
        &self,
        i: usize,
        j: usize,
    ) -> (Option<f32>, Option<f32>) {
        let n = if self.cols { j } else { i };
        // SAFETY: forwarded.
        unsafe {
            (
                (!self.scale.is_null()).then(|| *self.scale.add(n)),
                (!self.shift.is_null()).then(|| *self.shift.add(n)),
            )
        }
    }

    /// One output `x` with scale and shift `(s, t)`, its residual `r`.
    #[inline(always)]
    pub(in crate::routines) fn one(
        &self,
        x: f32,
        (s, t): (Option<f32>, Option<f32>),
        r: Option<f32>,
    ) -> f32 {
        let mut y = x;
        if let Some(s) = s {
            y *= s;
        }
        if let Some(t) = t {
            y += t;
        }
        if let Some(r) = r {
            y += r;
        }
        if self.lo != f32::NEG_INFINITY {
            y = super::rows::maximum(y, self.lo);
        }
        if self.hi != f32::INFINITY {
            y = super::rows::minimum(y, self.hi);
        }
        self.act.one(y)
    }

    /// Applies it in place to a `rows`×`cols` block of the output at `c`, rows `ld` apart
    /// (its first row, column and element being row 0, column 0 and offset 0 of this
    /// epilogue: see [`Epilogue::from`]).
    ///
    /// # Safety
    /// The block is inside the output (and, with the same offsets, the residual); its rows
    /// (columns) inside the per-row (per-column) operands.
    pub unsafe fn block(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        if self.is_none() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::avx512() {
            // SAFETY: forwarded; the CPU has AVX-512.
            return unsafe { avx512::block(self, c, ld, rows, cols) };
        } else if crate::avx2_fma() {
            // SAFETY: forwarded; the CPU has AVX2.
            return unsafe { avx2::block(self, c, ld, rows, cols) };
        }
        // SAFETY: forwarded.
        unsafe { self.scalar_block(c, ld, rows, cols) }
    }

    /// [`Epilogue::block`] in scalar code.
    ///
    /// # Safety
    /// As [`Epilogue::block`].
    unsafe fn scalar_block(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            for j in 0..cols {
                let at = i * ld + j;
                // SAFETY: (i, j) is inside the block.
                unsafe {
                    let r = (!self.res.is_null()).then(|| *self.res.add(at));
                    *c.add(at) = self.one(*c.add(at), self.coefs(i, j), r);
                }
            }
        }
    }
}

/// Whether the hardware's `max(v, c)` (`min` with `min`) is IEEE's for every non-NaN `v`: it
/// answers `c` for equal operands, wrong only for a `v` of zero against the other zero — so
/// unless `c` is −0 (+0 for the minimum), or NaN.
fn plain(c: f32, min: bool) -> bool {
    let lose = if min { 0.0f32 } else { -0.0f32 };
    !c.is_nan() && c.to_bits() != lose.to_bits()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{Act, Epilogue, ERF_BIG, ERF_SMALL, SIXTH, SQRT2, TANH};
    use crate::routines::rows::avx512::{exp16, key};
    use std::arch::x86_64::*;

    /// Scale and shift vectors for the 16 outputs of row `i` from column `j` (lanes in `m`).
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
    ) -> (Option<__m512>, Option<__m512>) {
        // SAFETY: forwarded.
        unsafe { (coef(e, e.scale, (i, j), m), coef(e, e.shift, (i, j), m)) }
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
        (s, t): (Option<__m512>, Option<__m512>),
        r: *const f32,
        m: __mmask16,
    ) -> __m512 {
        // SAFETY: forwarded.
        let v = unsafe { linear(e, v, (s, t), r, m) };
        // SAFETY: the CPU has AVX-512F.
        unsafe { activate(e.act, v) }
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
                Act::Gelu => {
                    let d = _mm512_div_ps(v, _mm512_set1_ps(SQRT2));
                    _mm512_mul_ps(v, _mm512_add_ps(erf(d), _mm512_set1_ps(1.0)))
                }
                Act::Silu => _mm512_mul_ps(v, sigmoid(v)),
                Act::HardSwish => {
                    // The hardware's minimum and maximum: where t is NaN, v is, and the
                    // product is v's NaN either way; t is never −0.
                    let t =
                        _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(SIXTH)), _mm512_set1_ps(0.5));
                    let t = _mm512_min_ps(t, _mm512_set1_ps(1.0));
                    _mm512_mul_ps(v, _mm512_max_ps(t, _mm512_setzero_ps()))
                }
                Act::HardSigmoid => {
                    // The hardware's minimum and maximum return their second operand where
                    // one is NaN: t second, so a NaN stays (t is never −0).
                    let t =
                        _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(SIXTH)), _mm512_set1_ps(0.5));
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

    /// Stores through quick epilogues whose decisions (`CLAMP`: [`Epilogue::quick_linear`]'s
    /// answer, `RES`: a residual, `A`: the activation's code) are constants of the code.
    pub(in crate::routines) trait Quick {
        /// Runs the stores.
        ///
        /// # Safety
        /// The implementor's; AVX-512F available.
        unsafe fn run<const CLAMP: bool, const RES: bool, const A: i64>(self);
    }

    /// Runs `q` with epilogue `e`'s decisions as constants (`clamp` from
    /// [`Epilogue::quick_linear`]): taken once for all the stores `q` makes.
    ///
    /// # Safety
    /// As `q`'s.
    #[inline(always)]
    pub(in crate::routines) unsafe fn decide(e: &Epilogue, clamp: bool, q: impl Quick) {
        // SAFETY: forwarded.
        unsafe {
            match (clamp, e.res.is_null()) {
                (false, true) => by_act::<false, false>(e.act, q),
                (false, false) => by_act::<false, true>(e.act, q),
                (true, true) => by_act::<true, false>(e.act, q),
                (true, false) => by_act::<true, true>(e.act, q),
            }
        }
    }

    /// [`decide`] for the activation.
    ///
    /// # Safety
    /// As [`decide`].
    #[inline(always)]
    unsafe fn by_act<const CLAMP: bool, const RES: bool>(act: Act, q: impl Quick) {
        // SAFETY: forwarded.
        unsafe {
            match act {
                Act::Identity => q.run::<CLAMP, RES, 0>(),
                Act::Sigmoid => q.run::<CLAMP, RES, 1>(),
                Act::Tanh => q.run::<CLAMP, RES, 2>(),
                Act::Gelu => q.run::<CLAMP, RES, 3>(),
                Act::Silu => q.run::<CLAMP, RES, 4>(),
                Act::HardSwish => q.run::<CLAMP, RES, 5>(),
                Act::HardSigmoid => q.run::<CLAMP, RES, 6>(),
                Act::HardSwishRelu6 => q.run::<CLAMP, RES, 7>(),
                Act::HardSwishRelu6Scaled => q.run::<CLAMP, RES, 8>(),
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
        st: (Option<__m512>, Option<__m512>),
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

    /// A quick epilogue's scale and shift: multiplying by 1 and adding −0 change no number,
    /// so absent operands are those.
    ///
    /// # Safety
    /// AVX-512F available.
    #[inline(always)]
    pub(in crate::routines) unsafe fn quick_coefs(
        (s, t): (Option<__m512>, Option<__m512>),
    ) -> (__m512, __m512) {
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

    /// [`apply`] but for the activation: scale, shift, residual and clamps.
    ///
    /// # Safety
    /// As [`apply`].
    #[inline(always)]
    pub(in crate::routines) unsafe fn linear(
        e: &Epilogue,
        mut v: __m512,
        (s, t): (Option<__m512>, Option<__m512>),
        r: *const f32,
        m: __mmask16,
    ) -> __m512 {
        // SAFETY: the CPU has AVX-512F; the residual's lanes are readable.
        unsafe {
            if let Some(s) = s {
                v = _mm512_mul_ps(v, s);
            }
            if let Some(t) = t {
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
    pub(super) unsafe fn block(e: &Epilogue, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            let mut j = 0;
            while j < cols {
                let n = (cols - j).min(16);
                let m: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
                let at = i * ld + j;
                // SAFETY: (i, j..j + n) is inside the block and its operands.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(m, c.add(at));
                    let v = apply(e, v, coefs(e, i, j, m), e.res.wrapping_add(at), m);
                    _mm512_mask_storeu_ps(c.add(at), m, v);
                }
                j += 16;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{Act, Epilogue, ERF_BIG, ERF_SMALL, SIXTH, SQRT2, TANH};
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
    ) -> (Option<__m256>, Option<__m256>) {
        // SAFETY: forwarded.
        unsafe { (coef(e, e.scale, (i, j), m), coef(e, e.shift, (i, j), m)) }
    }

    /// [`super::avx512::coef`] for 8 lanes.
    ///
    /// # Safety
    /// As [`coefs`].
    #[inline(always)]
    unsafe fn coef(
        e: &Epilogue,
        p: *const f32,
        (i, j): (usize, usize),
        m: __m256i,
    ) -> Option<__m256> {
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
    pub(in crate::routines) unsafe fn quick<const CLAMP: bool, const RES: bool>(
        e: &Epilogue,
        st: (Option<__m256>, Option<__m256>),
        ns: (usize, usize),
        v: impl Fn(usize) -> __m256,
        out: *mut f32,
    ) {
        // SAFETY: forwarded, for each activation.
        unsafe {
            match e.act {
                Act::Identity => quick_act::<CLAMP, RES, 0>(e, st, ns, v, out),
                Act::Sigmoid => quick_act::<CLAMP, RES, 1>(e, st, ns, v, out),
                Act::Tanh => quick_act::<CLAMP, RES, 2>(e, st, ns, v, out),
                Act::Gelu => quick_act::<CLAMP, RES, 3>(e, st, ns, v, out),
                Act::Silu => quick_act::<CLAMP, RES, 4>(e, st, ns, v, out),
                Act::HardSwish => quick_act::<CLAMP, RES, 5>(e, st, ns, v, out),
                Act::HardSigmoid => quick_act::<CLAMP, RES, 6>(e, st, ns, v, out),
                Act::HardSwishRelu6 => quick_act::<CLAMP, RES, 7>(e, st, ns, v, out),
                Act::HardSwishRelu6Scaled => quick_act::<CLAMP, RES, 8>(e, st, ns, v, out),
            }
        }
    }

    /// [`quick`] for the activation of code `A` ([`Act::of`]).
    ///
    /// # Safety
    /// As [`quick`].
    #[inline(always)]
    unsafe fn quick_act<const CLAMP: bool, const RES: bool, const A: i64>(
        e: &Epilogue,
        st: (Option<__m256>, Option<__m256>),
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
    pub(in crate::routines) unsafe fn quick_coefs(
        (s, t): (Option<__m256>, Option<__m256>),
    ) -> (__m256, __m256) {
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
        (s, t): (Option<__m256>, Option<__m256>),
        r: *const f32,
        m: __m256i,
    ) -> __m256 {
        // SAFETY: the CPU has AVX2; the residual's lanes are readable.
        unsafe {
            if let Some(s) = s {
                v = _mm256_mul_ps(v, s);
            }
            if let Some(t) = t {
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
            activate(e.act, v)
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
                Act::Gelu => {
                    let d = _mm256_div_ps(v, _mm256_set1_ps(SQRT2));
                    _mm256_mul_ps(v, _mm256_add_ps(erf(d), _mm256_set1_ps(1.0)))
                }
                Act::Silu => _mm256_mul_ps(v, sigmoid(v)),
                Act::HardSwish => {
                    let t =
                        _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(SIXTH)), _mm256_set1_ps(0.5));
                    let t = _mm256_min_ps(t, _mm256_set1_ps(1.0));
                    _mm256_mul_ps(v, _mm256_max_ps(t, _mm256_setzero_ps()))
                }
                Act::HardSigmoid => {
                    // As the AVX-512 code: t second, so a NaN stays.
                    let t =
                        _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(SIXTH)), _mm256_set1_ps(0.5));
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
            let abs =
                |v: __m256| _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
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

    /// [`Epilogue::block`] in 8-lane registers.
    ///
    /// # Safety
    /// As [`Epilogue::block`]; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(e: &Epilogue, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for i in 0..rows {
            let mut j = 0;
            while j < cols {
                let n = (cols - j).min(8);
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                let at = i * ld + j;
                // SAFETY: (i, j..j + n) is inside the block and its operands.
                unsafe {
                    let v = _mm256_maskload_ps(c.add(at), m);
                    let v = apply(e, v, coefs(e, i, j, m), e.res.wrapping_add(at), m);
                    _mm256_maskstore_ps(c.add(at), m, v);
                }
                j += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs with NaNs, signed zeros and values on both sides of the clamps.
    fn values(n: usize) -> Vec<f32> {
        let special = [f32::NAN, 0.0, -0.0, 6.0, -6.0, 1e30, -1e30, 0.5];
        (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    special[(i / 5) % special.len()]
                } else {
                    ((i * 7919) % 113) as f32 / 9.0 - 6.0
                }
            })
            .collect()
    }

    #[test]
    fn every_width_matches_the_elementwise_definition() {
        let (rows, cols, ld) = (5, 37, 41);
        let x = values(rows * ld);
        let res = values(rows * ld + 3);
        let scale: Vec<f32> = (0..ld).map(|i| 0.5 + (i % 7) as f32).collect();
        let shift: Vec<f32> = (0..ld).map(|i| (i % 5) as f32 - 2.0).collect();
        let clamps = [
            (0.0, 6.0),
            (-0.0, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (f32::NEG_INFINITY, f32::INFINITY),
        ];
        let acts = [
            Act::Identity,
            Act::Sigmoid,
            Act::Tanh,
            Act::Gelu,
            Act::Silu,
            Act::HardSwish,
            Act::HardSigmoid,
            Act::HardSwishRelu6,
            Act::HardSwishRelu6Scaled,
        ];
        for ((lo, hi), act) in clamps.into_iter().flat_map(|c| acts.map(|a| (c, a))) {
            for parts in 0..16 {
                let by_col = parts & 8 != 0;
                let given = |bit: usize, p: *const f32| {
                    if parts & bit != 0 {
                        p
                    } else {
                        std::ptr::null()
                    }
                };
                let e = Epilogue {
                    scale: given(1, scale.as_ptr()),
                    shift: given(2, shift.as_ptr()),
                    res: given(4, res.as_ptr()),
                    lo,
                    hi,
                    cols: by_col,
                    act,
                };
                let mut want = x.clone();
                for i in 0..rows {
                    for j in 0..cols {
                        let n = if by_col { j } else { i };
                        let mut y = x[i * ld + j];
                        if parts & 1 != 0 {
                            y *= scale[n];
                        }
                        if parts & 2 != 0 {
                            y += shift[n];
                        }
                        if parts & 4 != 0 {
                            y += res[i * ld + j];
                        }
                        y = super::super::rows::maximum(y, lo);
                        y = super::super::rows::minimum(y, hi);
                        // The activation lane by lane, as the vector loops compute it, and
                        // within a few ulp of the exact function.
                        let z = act.one(y);
                        let exact = match act {
                            Act::Identity => y as f64,
                            Act::Sigmoid => 1.0 / (1.0 + (-(y as f64)).exp()),
                            Act::Tanh => (y as f64).tanh(),
                            Act::Gelu => {
                                let x = y as f64;
                                x * (libm::erf(x / std::f64::consts::SQRT_2) + 1.0)
                            }
                            Act::Silu => y as f64 / (1.0 + (-(y as f64)).exp()),
                            Act::HardSwish => {
                                let x = y as f64;
                                x * (x / 6.0 + 0.5).clamp(0.0, 1.0)
                            }
                            Act::HardSigmoid => (y as f64 / 6.0 + 0.5).clamp(0.0, 1.0),
                            Act::HardSwishRelu6 | Act::HardSwishRelu6Scaled => {
                                let x = y as f64;
                                x * (x + 3.0).clamp(0.0, 6.0) / 6.0
                            }
                        };
                        // (GELU within its erf's absolute error, scaled by x.)
                        let tol = match act {
                            Act::Gelu => 4e-7 * (1.0 + (y as f64).abs()),
                            Act::Silu => 6.0 * f32::EPSILON as f64 * exact.abs() + 1e-37,
                            // (Its clamp's argument rounds once before cancelling near -3.)
                            Act::HardSwish => {
                                let x = (y as f64).abs();
                                4.0 * f32::EPSILON as f64 * (exact.abs() + x * (x / 6.0 + 0.5))
                                    + 1e-37
                            }
                            // (Its sum rounds once before cancelling near -3.)
                            Act::HardSigmoid => {
                                4.0 * f32::EPSILON as f64 * ((y as f64).abs() / 6.0 + 0.5) + 1e-37
                            }
                            // (x + 3 rounds once before cancelling near -3.)
                            Act::HardSwishRelu6 | Act::HardSwishRelu6Scaled => {
                                let x = (y as f64).abs();
                                4.0 * f32::EPSILON as f64 * (exact.abs() + x * (x + 3.0) / 6.0)
                                    + 1e-37
                            }
                            _ => 4.0 * f32::EPSILON as f64 * exact.abs() + 1e-37,
                        };
                        assert!(
                            (z as f64 - exact).abs() <= tol || (z.is_nan() && exact.is_nan()),
                            "{act:?}({y}) = {z}, not {exact}"
                        );
                        want[i * ld + j] = z;
                    }
                }
                let mut got = Vec::new();
                let mut c = x.clone();
                // SAFETY: the block is inside c, res and the per-row (per-column) operands.
                unsafe { e.scalar_block(c.as_mut_ptr(), ld, rows, cols) };
                got.push(c);
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::avx2_fma() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX2.
                        unsafe { avx2::block(&e, c.as_mut_ptr(), ld, rows, cols) };
                        got.push(c);
                    }
                    if crate::avx512() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX-512.
                        unsafe { avx512::block(&e, c.as_mut_ptr(), ld, rows, cols) };
                        got.push(c);
                    }
                }
                for g in &got {
                    for (k, (a, b)) in g.iter().zip(&want).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "parts {parts} lo {lo} hi {hi} {act:?} at {k}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
