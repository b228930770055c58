//! What products and convolutions apply to each output as they store it (a fused epilogue):
//! `y = post(act(clamp((pre(x)·scale·scale2 + shift) + res[at], lo, hi)))` (or `pre(x·scale)`)
//! with `scale`, `scale2` and `shift` per row (a convolution's output channel) or per column (a product's bias), every part
//! optional — a folded batch norm, a bias, a residual add, ReLU/ReLU6/Clip, a sigmoid, tanh,
//! GELU, SiLU, HardSwish (as ONNX, Paddle or Keras write it) or HardSigmoid, and `pre` and
//! `post` a QDQ model's quantize-dequantize pairs ([`Quant`]; `pre` after the scale instead,
//! where that is a quantized product's dequantization; a QOperator requantizer is a pair
//! whose divisor is 1; `scale2` after that pair, a batch norm between a requantizer and the
//! next quantizer), and with `shift_first` the shift added before everything (an integer
//! bias before a requantizer's scale) — without a second pass over the output. Operation for operation what the
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
    /// GELU then its ½: `x · (erf(x / √2) + 1) · 0.5` (where nothing after takes the ½ in).
    GeluHalf = 9,
}

/// A quantize-dequantize pair as a QDQ model writes it between its operators:
/// `(sat(round(y / s) + z) − z) · d`, `round` half to even, `sat` the conversion to the
/// quantized type (clamped to `lo..=hi`, NaN to 0) — ONNX's QuantizeLinear then
/// DequantizeLinear, each operation rounded as the elementwise ops compute it. The
/// dequantizer's scale `d` is the quantizer's `s` as models write them; 1 where the optimizer
/// has moved it into the weights of the product after.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    /// The scale (positive and finite).
    pub s: f32,
    /// The zero point (an integer inside `lo..=hi`).
    pub z: f32,
    /// The quantized type's least value (0 for u8, −128 for i8).
    pub lo: f32,
    /// The quantized type's greatest value.
    pub hi: f32,
    /// The dequantizer's scale.
    pub d: f32,
}

impl Quant {
    /// The pair of a routine's five scalars `[s, z, lo, hi, d]`, none where `s` is 0. (The
    /// lowering passes only pairs that [`Quant::one`] computes as the elementwise ops do: a
    /// positive finite scale, integer bounds around an integer zero point.)
    pub fn of([s, z, lo, hi, d]: [f32; 5]) -> Option<Quant> {
        (s != 0.0).then_some(Quant { s, z, lo, hi, d })
    }

    /// The routine scalars that stand for `q` (`[0; 5]` for none).
    pub fn scalars(q: Option<Quant>) -> [f32; 5] {
        q.map_or([0.0; 5], |q| [q.s, q.z, q.lo, q.hi, q.d])
    }

    /// One value through the pair.
    pub fn one(&self, y: f32) -> f32 {
        let t = (y / self.s).round_ties_even() + self.z;
        // (No `clamp`, which panics on bounds out of order.)
        let q = if t.is_nan() {
            0.0
        } else {
            t.max(self.lo).min(self.hi)
        };
        (q - self.z) * self.d
    }
}

/// HardSwish's slope, 1/6 rounded to f32 as the importer's constant is.
pub const SIXTH: f32 = 0.166_666_67;

impl Act {
    /// The activation of a routine's `act` argument (0 identity, 1 sigmoid, 2 tanh, 3 GELU,
    /// 4 SiLU, 5 HardSwish, 6 HardSigmoid, 7 and 8 HardSwish's ReLU6 forms, 9 GELU with its
    /// ½; others identity).
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
            9 => Act::GeluHalf,
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
            Act::GeluHalf => Act::Gelu.one(x) * 0.5,
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

/// An output's scale, shift and second scale (see [`Epilogue`]), each absent where its
/// operand is: one value for the scalar code, a vector's lanes for the vector code.
pub(in crate::routines) type Coefs<V> = (Option<V>, Option<V>, Option<V>);

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
    /// Per row (or per column with `cols`), or null for none: a second scale, after `scale`
    /// and the pair that follows it.
    pub scale2: *const f32,
    /// The lower clamp (-inf for none).
    pub lo: f32,
    /// The upper clamp (+inf for none).
    pub hi: f32,
    /// Whether `scale`, `shift` and `scale2` are per column.
    pub cols: bool,
    /// The activation.
    pub act: Act,
    /// A quantize-dequantize pair first, before the scale (after it with `pre_after_scale`).
    pub pre: Option<Quant>,
    /// Whether `pre` comes after the scale (a quantized product's dequantization) rather than
    /// before.
    pub pre_after_scale: bool,
    /// Whether the shift comes first, before everything (QLinearConv's and QGemm's integer
    /// bias, added before their requantizer's scale).
    pub shift_first: bool,
    /// A quantize-dequantize pair last, after the activation.
    pub post: Option<Quant>,
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
        scale2: std::ptr::null(),
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
        cols: false,
        act: Act::Identity,
        pre: None,
        pre_after_scale: false,
        shift_first: false,
        post: None,
    };

    /// The epilogue of a routine's arguments (`cols` nonzero for per-column operands, `act`
    /// as [`Act::of`], `quant` the pairs' scalars: `pre`'s five as [`Quant::of`], its place
    /// — 1 when it comes after the scale, plus 2 when the shift comes first —, `post`'s five).
    pub fn new(
        (scale, shift, res, scale2): (*const f32, *const f32, *const f32, *const f32),
        (lo, hi): (f32, f32),
        cols: i64,
        act: i64,
        quant: [f32; 11],
    ) -> Self {
        let [a, b, c, d, e, at, f, g, h, i, j] = quant;
        Epilogue {
            scale,
            shift,
            res,
            scale2,
            lo,
            hi,
            cols: cols != 0,
            act: Act::of(act),
            pre: Quant::of([a, b, c, d, e]),
            // 0, 1, 2 or 3 (what `quant_scalars` writes; `Call::checked` refuses others).
            pre_after_scale: at == 1.0 || at == 3.0,
            shift_first: at == 2.0 || at == 3.0,
            post: Quant::of([f, g, h, i, j]),
        }
    }

    /// The routine scalars of its pairs (the eleven after `lo` and `hi`).
    pub fn quant_scalars(&self) -> [f32; 11] {
        let ([a, b, c, d, e], [f, g, h, i, j]) =
            (Quant::scalars(self.pre), Quant::scalars(self.post));
        let at = f32::from(u8::from(self.pre_after_scale) + 2 * u8::from(self.shift_first));
        [a, b, c, d, e, at, f, g, h, i, j]
    }

    /// `pre` as the pair before the scale and the pair after it (one of them, or none).
    #[inline(always)]
    pub(in crate::routines) fn pre_pairs(&self) -> (Option<&Quant>, Option<&Quant>) {
        match (&self.pre, self.pre_after_scale) {
            (Some(q), false) => (Some(q), None),
            (Some(q), true) => (None, Some(q)),
            (None, _) => (None, None),
        }
    }

    /// Whether it ends with its clamps: no activation and no quantize-dequantize pair after.
    pub fn linear_end(&self) -> bool {
        self.act == Act::Identity && self.post.is_none()
    }

    /// Whether it changes nothing.
    pub fn is_none(&self) -> bool {
        self.scale.is_null()
            && self.shift.is_null()
            && self.res.is_null()
            && self.scale2.is_null()
            && self.lo == f32::NEG_INFINITY
            && self.hi == f32::INFINITY
            && self.act == Act::Identity
            && self.pre.is_none()
            && self.post.is_none()
    }

    /// Whether the vector code may run it by `avx512::quick_one` (and its AVX2 twin) alone:
    /// no activation, clamps (if any) that the hardware's maximum and minimum give —
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
        if self.pre.is_some() || self.post.is_some() || self.shift_first || !self.scale2.is_null() {
            return None;
        }
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
            scale2: by(self.scale2, n),
            ..*self
        }
    }

    /// The scale, shift and second scale of the output at row `i`, column `j` (`None` for
    /// absent ones).
    ///
    /// # Safety
    /// Row `i` (column `j` with `cols`) is inside the per-row (per-column) operands.
    #[inline(always)]
    pub(in crate::routines) unsafe fn coefs(&self, i: usize, j: usize) -> Coefs<f32> {
        let n = if self.cols { j } else { i };
        // SAFETY: forwarded (row or column `n` of each operand given).
        let at = |p: *const f32| (!p.is_null()).then(|| unsafe { *p.add(n) });
        (at(self.scale), at(self.shift), at(self.scale2))
    }

    /// One output `x` with scale, shift and second scale `(s, t, s2)`, its residual `r`.
    #[inline(always)]
    pub(in crate::routines) fn one(&self, x: f32, (s, t, s2): Coefs<f32>, r: Option<f32>) -> f32 {
        let mut y = x;
        let (first, second) = self.pre_pairs();
        if let (true, Some(t)) = (self.shift_first, t) {
            y += t;
        }
        if let Some(q) = first {
            y = q.one(y);
        }
        if let Some(s) = s {
            y *= s;
        }
        if let Some(q) = second {
            y = q.one(y);
        }
        if let Some(s2) = s2 {
            y *= s2;
        }
        if let (false, Some(t)) = (self.shift_first, t) {
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
        let y = self.act.one(y);
        match &self.post {
            Some(q) => q.one(y),
            None => y,
        }
    }

    /// Applies it in place to a `rows`×`cols` block of the output at `c`, rows `ld` apart
    /// (its first row, column and element being row 0, column 0 and offset 0 of this
    /// epilogue: see [`Epilogue::from`]).
    ///
    /// # Safety
    /// The block is inside the output (and, with the same offsets, the residual); its rows
    /// (columns) inside the per-row (per-column) operands.
    pub unsafe fn block(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        // SAFETY: forwarded.
        unsafe { self.block_at((0, 0, 0), c, ld, rows, cols) }
    }

    /// [`Epilogue::block`] for the block from row `r0`, column `c0` and element `a0` of the
    /// output (`self.from(r0, c0, a0).block(...)`, without that copy: loads from a copy
    /// written just before stall on its stores).
    ///
    /// # Safety
    /// As [`Epilogue::block`], for that part of the output.
    pub unsafe fn block_at(
        &self,
        (r0, c0, a0): (usize, usize, usize),
        c: *mut f32,
        ld: usize,
        rows: usize,
        cols: usize,
    ) {
        if self.is_none() {
            return;
        }
        let at = (r0, c0, a0);
        #[cfg(target_arch = "x86_64")]
        if crate::avx512() {
            // SAFETY: forwarded; the CPU has AVX-512.
            return unsafe { avx512::block(self, at, c, ld, rows, cols) };
        } else if crate::avx2_fma() {
            // SAFETY: forwarded; the CPU has AVX2.
            return unsafe { avx2::block(self, at, c, ld, rows, cols) };
        }
        // SAFETY: forwarded.
        unsafe { self.scalar_block(at, c, ld, rows, cols) }
    }

    /// [`Epilogue::block`] in scalar code.
    ///
    /// # Safety
    /// As [`Epilogue::block`].
    unsafe fn scalar_block(
        &self,
        (r0, c0, a0): (usize, usize, usize),
        c: *mut f32,
        ld: usize,
        rows: usize,
        cols: usize,
    ) {
        for i in 0..rows {
            for j in 0..cols {
                let at = i * ld + j;
                // SAFETY: (i, j) is inside the block.
                unsafe {
                    let r = (!self.res.is_null()).then(|| *self.res.add(a0 + at));
                    *c.add(at) = self.one(*c.add(at), self.coefs(r0 + i, c0 + j), r);
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

/// Stores through quick epilogues whose decisions (`CLAMP`: [`Epilogue::quick_linear`]'s
/// answer, `RES`: a residual, `A`: the activation's code) are constants of the code.
pub(in crate::routines) trait Quick {
    /// Runs the stores.
    ///
    /// # Safety
    /// The implementor's.
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
            Act::GeluHalf => q.run::<CLAMP, RES, 9>(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;

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

    /// `Quant::one` is QuantizeLinear then DequantizeLinear as the elementwise ops compute
    /// them: a division, rounding half to even, the zero point added, the saturating
    /// conversion (NaN to 0) and back, the zero point taken away, the scale multiplied.
    #[test]
    fn a_pair_is_the_elementwise_ops() {
        let xs = values(4000);
        let edge = [
            0.5f32 * 0.37,
            1.5 * 0.37,
            2.5 * 0.37,
            -0.5 * 0.37,
            1e-45,
            f32::INFINITY,
        ];
        for (s, z, signed, d) in [
            (0.37f32, 3.0f32, false, 0.37f32),
            (0.0021, 0.0, false, 1.0),
            (0.11, -5.0, true, 0.11),
        ] {
            let (lo, hi) = if signed {
                (-128.0, 127.0)
            } else {
                (0.0, 255.0)
            };
            let q = Quant::of([s, z, lo, hi, d]).unwrap();
            for &x in xs.iter().chain(&edge).chain(&[f32::NEG_INFINITY]) {
                let t = (x / s).round_ties_even() + z;
                let c = if signed {
                    t as i8 as f32
                } else {
                    t as u8 as f32
                };
                let want = (c - z) * d;
                let got = q.one(x);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{x} by {s}, {z}: {got} vs {want}"
                );
            }
        }
        assert!(Quant::of([0.0, 1.0, 0.0, 255.0, 1.0]).is_none());
    }

    /// The vector pairs (clamped before rounding, by the integer conversion) give
    /// `Quant::one`'s bits for every input: random bit patterns, halves of the scale either
    /// side of the bounds (ties), signed zeros, NaNs and infinities, with zero points inside
    /// and at the ends of u8 and i8, and a negative dequantizer's scale (whose zeros keep
    /// their sign only if the rounding's −0 does not leak).
    #[test]
    fn vector_pairs_are_the_scalar_pair() {
        let mut bits = 0x2545_f491_u32;
        let mut xs: Vec<f32> = (0..60_000)
            .map(|_| {
                bits ^= bits << 13;
                bits ^= bits >> 17;
                bits ^= bits << 5;
                f32::from_bits(bits)
            })
            .collect();
        let quants = [
            [0.37f32, 3.0, 0.0, 255.0, 0.37],
            [0.0021, 0.0, 0.0, 255.0, 1.0],
            [0.011, 255.0, 0.0, 255.0, -0.5],
            [0.11, -5.0, -128.0, 127.0, 0.11],
            [3.0e-5, -128.0, -128.0, 127.0, -1.0],
            [7.5, 0.0, -128.0, 127.0, 7.5],
        ];
        for q in quants {
            let s = q[0];
            xs.extend((-600..600).map(|k| (k as f32 + 0.5) * s));
            xs.extend((-600..600).map(|k| k as f32 * s * 0.25));
        }
        xs.extend([
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        xs.extend([
            1e-45,
            -1e-45,
            f32::MAX,
            f32::MIN,
            16_777_216.0,
            -8_388_609.0,
        ]);
        let n = xs.len() / 16 * 16;
        for q in quants.map(|q| Quant::of(q).unwrap()) {
            let want: Vec<u32> = xs[..n].iter().map(|&x| q.one(x).to_bits()).collect();
            #[cfg(target_arch = "x86_64")]
            {
                let check = |isa: &str, got: &[f32]| {
                    for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w, "{isa} {q:?}: {} -> {g}", xs[i]);
                    }
                };
                if crate::avx512() {
                    use std::arch::x86_64::*;
                    let mut got = vec![0.0f32; n];
                    for (x, y) in xs[..n].chunks_exact(16).zip(got.chunks_exact_mut(16)) {
                        // SAFETY: AVX-512F available; 16 lanes each side.
                        unsafe {
                            let v = avx512::quant(&q, _mm512_loadu_ps(x.as_ptr()));
                            _mm512_storeu_ps(y.as_mut_ptr(), v);
                        }
                    }
                    check("AVX-512", &got);
                }
                if crate::avx2_fma() {
                    use std::arch::x86_64::*;
                    let mut got = vec![0.0f32; n];
                    for (x, y) in xs[..n].chunks_exact(8).zip(got.chunks_exact_mut(8)) {
                        // SAFETY: AVX2 available; 8 lanes each side.
                        unsafe {
                            let v = avx2::quant(&q, _mm256_loadu_ps(x.as_ptr()));
                            _mm256_storeu_ps(y.as_mut_ptr(), v);
                        }
                    }
                    check("AVX2", &got);
                }
            }
            let _ = &want;
        }
    }

    /// A block from an offset is the block of the epilogue shifted there (per row and per
    /// column, with a residual), on every instruction set.
    #[test]
    fn offsets_are_a_shifted_epilogue() {
        let (ld, rows, cols) = (40, 4, 37);
        let x = values(ld * (rows + 3));
        let res = values(ld * (rows + 3) + 5);
        let scale: Vec<f32> = (0..ld + 8).map(|i| 0.5 + (i % 7) as f32).collect();
        let shift: Vec<f32> = (0..ld + 8).map(|i| (i % 5) as f32 - 2.0).collect();
        let scale2: Vec<f32> = (0..ld + 8).map(|i| 1.5 - (i % 3) as f32).collect();
        for by_col in [false, true] {
            let e = Epilogue::new(
                (
                    scale.as_ptr(),
                    shift.as_ptr(),
                    res.as_ptr(),
                    scale2.as_ptr(),
                ),
                (-3.0, 4.0),
                i64::from(by_col),
                1,
                [0.1, 2.0, 0.0, 255.0, 0.1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            );
            let at = (2, 3, 2 * ld + 3);
            let mut want = x.clone();
            // SAFETY: the block from element at.2 is inside x and the operands.
            unsafe {
                let w = want.as_mut_ptr().add(at.2);
                e.from(at.0, at.1, at.2)
                    .scalar_block((0, 0, 0), w, ld, rows, cols);
            }
            let mut got = x.clone();
            // SAFETY: as above.
            unsafe { e.block_at(at, got.as_mut_ptr().add(at.2), ld, rows, cols) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "by column: {by_col}");
        }
    }

    #[test]
    fn every_width_matches_the_elementwise_definition() {
        let (rows, cols, ld) = (5, 37, 41);
        let x = values(rows * ld);
        let res = values(rows * ld + 3);
        let scale: Vec<f32> = (0..ld).map(|i| 0.5 + (i % 7) as f32).collect();
        let shift: Vec<f32> = (0..ld).map(|i| (i % 5) as f32 - 2.0).collect();
        let scale2: Vec<f32> = (0..ld).map(|i| 1.5 - (i % 3) as f32 * 0.7).collect();
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
            Act::GeluHalf,
        ];
        for ((lo, hi), act) in clamps.into_iter().flat_map(|c| acts.map(|a| (c, a))) {
            for parts in 0..256 {
                let by_col = parts & 8 != 0;
                // With 64, QOperator's form: the shift (an integer bias) first, the pair a
                // requantizer (no division).
                let shift_first = parts & 64 != 0;
                let s = if shift_first { 1.0 } else { 0.37 };
                // QDQ pairs: u8 before the scale (after it with a scale per column), i8 after
                // (its NaNs to 0, not to the range's end) without its dequantizer's scale.
                let pre = Quant::of([s, 3.0, 0.0, 255.0, 0.37]).filter(|_| parts & 16 != 0);
                let post = Quant::of([0.11, -5.0, -128.0, 127.0, 1.0]).filter(|_| parts & 32 != 0);
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
                    // With 128 a second scale (after the pair after the scale, if any).
                    scale2: given(128, scale2.as_ptr()),
                    lo,
                    hi,
                    cols: by_col,
                    act,
                    pre,
                    pre_after_scale: by_col,
                    shift_first,
                    post,
                };
                let mut want = x.clone();
                for i in 0..rows {
                    for j in 0..cols {
                        let n = if by_col { j } else { i };
                        let mut y = x[i * ld + j];
                        if shift_first && parts & 2 != 0 {
                            y += shift[n];
                        }
                        if let Some(q) = pre.filter(|_| !by_col) {
                            y = q.one(y);
                        }
                        if parts & 1 != 0 {
                            y *= scale[n];
                        }
                        if let Some(q) = pre.filter(|_| by_col) {
                            y = q.one(y);
                        }
                        if parts & 128 != 0 {
                            y *= scale2[n];
                        }
                        if !shift_first && parts & 2 != 0 {
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
                            Act::Gelu | Act::GeluHalf => {
                                let x = y as f64;
                                let h = if act == Act::GeluHalf { 0.5 } else { 1.0 };
                                h * x * (libm::erf(x / std::f64::consts::SQRT_2) + 1.0)
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
                            Act::Gelu | Act::GeluHalf => 4e-7 * (1.0 + (y as f64).abs()),
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
                        want[i * ld + j] = post.map_or(z, |q| q.one(z));
                    }
                }
                let mut got = Vec::new();
                let mut c = x.clone();
                // SAFETY: the block is inside c, res and the per-row (per-column) operands.
                unsafe { e.scalar_block((0, 0, 0), c.as_mut_ptr(), ld, rows, cols) };
                got.push(c);
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::avx2_fma() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX2.
                        unsafe { avx2::block(&e, (0, 0, 0), c.as_mut_ptr(), ld, rows, cols) };
                        got.push(c);
                    }
                    if crate::avx512() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX-512.
                        unsafe { avx512::block(&e, (0, 0, 0), c.as_mut_ptr(), ld, rows, cols) };
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
