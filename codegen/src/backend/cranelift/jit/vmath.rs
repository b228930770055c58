//! The f32x4 polynomials of vector loops: `exp`, `log`, `erf`, `sigmoid` and `tanh` (the
//! accuracy contract is in `simd.rs`'s module docs), with the clamps, the `2^n` scaling and
//! the fused multiply-add choice they share.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, Value};
use cranelift_module::Module;

use kernel::routines::epilogue::{ERF_BIG, ERF_SMALL, TANH};

use super::simd::le;
#[cfg(test)]
use super::simd::NO_FMA;
use super::Lower;

impl Lower<'_, '_> {
    /// `exp` of an `f32x4` (see the accuracy contract in the module docs). Lanes below -104
    /// are 0 (e^-104 rounds to 0), computed from 0 and zeroed at the end so that no lane
    /// underflows (an instruction with an underflowing lane costs a microcode assist; a
    /// softmax's masked scores are all such lanes). With `x` clamped to [-104, 89] (beyond,
    /// the result is inf; NaN passes through the clamp):
    /// `n = round(x log2 e)`, `r = x - n ln 2` in two parts (the first exact), a degree-6
    /// polynomial for `e^r` on |r| <= ln(2)/2, and the scale `2^n` applied as two factors
    /// `2^(n>>1) · 2^(n - (n>>1))`, each a normal float, so that results in the subnormal
    /// range are rounded once and large ones overflow to inf.
    pub(super) fn vexp(&mut self, x: Value) -> Value {
        let lo = self.splat_f32(-104.0);
        let gone = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let gone = self.b.ins().bitcast(types::F32X4, le(), gone);
        let zero = self.splat_f32(0.0);
        let x = self.b.ins().bitselect(gone, zero, x);
        let x = self.vmin_keep_nan(x, 89.0);
        use kernel::routines::rows::{C1, C2, LOG2E, MAGIC, P};
        let log2e = self.splat_f32(LOG2E);
        let t = self.b.ins().fmul(x, log2e);
        // n = t rounded to the nearest integer, ties to even (as `nearest`): adding 1.5 · 2^23
        // leaves no fraction bits, and the low bits of the sum are then n as an integer.
        let magic = self.splat_f32(MAGIC);
        let tm = self.b.ins().fadd(t, magic);
        let n = self.b.ins().fsub(tm, magic);
        let tmi = self.b.ins().bitcast(types::I32X4, le(), tm);
        let mi = self.splat_i32(0x4b40_0000);
        let ni = self.b.ins().isub(tmi, mi);
        let c1 = self.splat_f32(C1);
        let c2 = self.splat_f32(C2);
        let a = self.b.ins().fmul(n, c1);
        let r = self.b.ins().fsub(x, a);
        let b = self.b.ins().fmul(n, c2);
        let r = self.b.ins().fsub(r, b);
        let p = self.vpoly(&P, r);
        let r2 = self.b.ins().fmul(r, r);
        let y = self.b.ins().fmul(p, r2);
        let y = self.b.ins().fadd(y, r);
        let one = self.splat_f32(1.0);
        let y = self.b.ins().fadd(y, one);
        let one = self.b.ins().iconst(types::I32, 1);
        let n1 = self.b.ins().sshr(ni, one);
        let n2 = self.b.ins().isub(ni, n1);
        let s1 = self.pow2(n1);
        let s2 = self.pow2(n2);
        let y = self.b.ins().fmul(y, s1);
        let y = self.b.ins().fmul(y, s2);
        self.b.ins().bitselect(gone, zero, y)
    }

    /// Whether the host has fused multiply-add (then `fma` is one instruction; without it,
    /// Cranelift would call a library function per lane).
    pub(super) fn use_fma(&self) -> bool {
        #[cfg(test)]
        if NO_FMA.with(std::cell::Cell::get) {
            return false;
        }
        self.module.isa().has_native_fma()
    }

    /// `coefs[0] x^(n-1) + ... + coefs[n-1]` by Horner's rule: a fused multiply-add per
    /// coefficient if the host has them, else a multiply and an add, each rounded. (So the
    /// last bit of a polynomial may differ between hosts; both are within the accuracy
    /// contract.)
    pub(super) fn vpoly(&mut self, coefs: &[f32], x: Value) -> Value {
        let fma = self.use_fma();
        let mut p = self.splat_f32(coefs[0]);
        for &c in &coefs[1..] {
            let c = self.splat_f32(c);
            p = if fma {
                self.b.ins().fma(p, x, c)
            } else {
                let m = self.b.ins().fmul(p, x);
                self.b.ins().fadd(m, c)
            };
        }
        p
    }

    /// `erf` of an `f32x4` (see the accuracy contract in the module docs). For |x| < 0.921875,
    /// `x + x·P(x²)` with `P` of degree 6 fitted to `erf(x)/x - 1`, which keeps -0 and
    /// subnormals right (and if all four lanes are there, that is all); beyond, `±(1 - exp(-t²)·Q(t - 2.4609375))` with `t = min(|x|, 4)`
    /// (erf rounds to ±1 from 3.92 on; NaN kept) and `Q` of degree 8 fitted to `erfc(t)·exp(t²)`, the
    /// fit weighted by `exp(-t²)` (the error that reaches the result). Both fits are minimax
    /// (Lawson's algorithm, coefficients rounded to f32).
    pub(super) fn verf(&mut self, x: Value) -> Value {
        let z = self.b.ins().fmul(x, x);
        let p = self.vpoly(&ERF_SMALL, z);
        let xp = self.b.ins().fmul(x, p);
        let small = self.b.ins().fadd(x, xp);
        let a = self.b.ins().fabs(x);
        let limit = self.splat_f32(0.921_875);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, a, limit);
        // The other piece only if some lane needs it (often none does: GELU's inputs are
        // mostly small).
        let all_small = self.b.ins().vall_true(is_small);
        let big_b = self.b.create_block();
        let join = self.b.create_block();
        let r = self.b.append_block_param(join, types::F32X4);
        self.b
            .ins()
            .brif(all_small, join, &[BlockArg::Value(small)], big_b, &[]);
        self.b.switch_to_block(big_b);
        let t = self.vmin_keep_nan(a, 4.0);
        let c = self.splat_f32(2.460_937_5);
        let s = self.b.ins().fsub(t, c);
        let q = self.vpoly(&ERF_BIG, s);
        let t2 = self.b.ins().fmul(t, t);
        let nt2 = self.b.ins().fneg(t2);
        let e = self.vexp(nt2);
        let eq = self.b.ins().fmul(e, q);
        let one = self.splat_f32(1.0);
        let big = self.b.ins().fsub(one, eq);
        let sign = self.splat_f32(-0.0);
        let sign = self.b.ins().band(x, sign);
        let big = self.b.ins().bor(big, sign);
        let is_small = self.b.ins().bitcast(types::F32X4, le(), is_small);
        let mixed = self.b.ins().bitselect(is_small, small, big);
        self.b.ins().jump(join, &[BlockArg::Value(mixed)]);
        self.b.switch_to_block(join);
        r
    }

    /// `log` of an `f32x4` (see the accuracy contract in the module docs): subnormals scaled
    /// by 2^23 first; `x = 2^k · m` with `m` in [sqrt(1/2), sqrt(2)), and with `f = m - 1`
    /// (exact), `log x = f - f²/2 + f³·P(f) + k ln 2` (Cephes `logf`: its polynomial, and
    /// `ln 2` in two parts, the first exact in products with `k`). Then the special values:
    /// +inf for +inf, -inf for ±0, NaN below zero and for NaN.
    pub(super) fn vlog(&mut self, x: Value) -> Value {
        let min = self.splat_f32(f32::MIN_POSITIVE);
        let sub = self.b.ins().fcmp(FloatCC::LessThan, x, min);
        let subf = self.b.ins().bitcast(types::F32X4, le(), sub);
        let two23 = self.splat_f32(8_388_608.0);
        let scaled = self.b.ins().fmul(x, two23);
        let xs = self.b.ins().bitselect(subf, scaled, x);
        let m23 = self.splat_i32(-23);
        let kadj = self.b.ins().band(sub, m23);
        // The mantissa moved into [sqrt(1/2), sqrt(2)), the exponent adjusted to match.
        let ix = self.b.ins().bitcast(types::I32X4, le(), xs);
        let off = self.splat_i32(0x3f80_0000 - 0x3f35_04f3);
        let ix = self.b.ins().iadd(ix, off);
        let amt = self.b.ins().iconst(types::I32, 23);
        let k = self.b.ins().sshr(ix, amt);
        let bias = self.splat_i32(-0x7f);
        let k = self.b.ins().iadd(k, bias);
        let k = self.b.ins().iadd(k, kadj);
        let mask = self.splat_i32(0x007f_ffff);
        let mb = self.b.ins().band(ix, mask);
        let base = self.splat_i32(0x3f35_04f3);
        let mb = self.b.ins().iadd(mb, base);
        let m = self.b.ins().bitcast(types::F32X4, le(), mb);
        let one = self.splat_f32(1.0);
        let f = self.b.ins().fsub(m, one);
        let e = self.b.ins().fcvt_from_sint(types::F32X4, k);
        let z = self.b.ins().fmul(f, f);
        let p = self.vpoly(
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_84e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_7e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
            f,
        );
        let fz = self.b.ins().fmul(f, z);
        let y = self.b.ins().fmul(fz, p);
        let c2 = self.splat_f32(-2.121_944_4e-4);
        let ec2 = self.b.ins().fmul(e, c2);
        let y = self.b.ins().fadd(y, ec2);
        let half = self.splat_f32(-0.5);
        let hz = self.b.ins().fmul(half, z);
        let y = self.b.ins().fadd(y, hz);
        let r = self.b.ins().fadd(f, y);
        let c1 = self.splat_f32(0.693_359_4);
        let ec1 = self.b.ins().fmul(e, c1);
        let r = self.b.ins().fadd(r, ec1);
        // +inf stays; ±0 gives -inf; below zero and NaN give NaN.
        let inf = self.splat_f32(f32::INFINITY);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        let is_inf = self.b.ins().bitcast(types::F32X4, le(), is_inf);
        let r = self.b.ins().bitselect(is_inf, x, r);
        let zero = self.splat_f32(0.0);
        let is_zero = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let is_zero = self.b.ins().bitcast(types::F32X4, le(), is_zero);
        let ninf = self.splat_f32(f32::NEG_INFINITY);
        let r = self.b.ins().bitselect(is_zero, ninf, r);
        let bad = self.b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
        let bad = self.b.ins().bitcast(types::F32X4, le(), bad);
        let nan = self.splat_f32(f32::NAN);
        self.b.ins().bitselect(bad, nan, r)
    }

    /// `min(x, hi)`, NaN kept (the `minps` pattern of the x64 backend).
    pub(super) fn vmin_keep_nan(&mut self, x: Value, hi: f32) -> Value {
        let hi = self.splat_f32(hi);
        let above = self.b.ins().fcmp(FloatCC::LessThan, hi, x);
        let above = self.b.ins().bitcast(types::F32X4, le(), above);
        self.b.ins().bitselect(above, hi, x)
    }

    /// `2^n` for lanes `n` of an `i32x4` in the normal exponent range.
    pub(super) fn pow2(&mut self, n: Value) -> Value {
        let bias = self.splat_i32(127);
        let e = self.b.ins().iadd(n, bias);
        let amt = self.b.ins().iconst(types::I32, 23);
        let e = self.b.ins().ishl(e, amt);
        self.b.ins().bitcast(types::F32X4, le(), e)
    }

    /// `sigmoid` as the scalar helper computes it: with `e = exp(-|x|)`, `1 / (1 + e)` for
    /// `x >= 0` and `e / (1 + e)` otherwise (neither overflows).
    pub(super) fn vsigmoid(&mut self, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let na = self.b.ins().fneg(a);
        let e = self.vexp(na);
        let one = self.splat_f32(1.0);
        let zero = self.splat_f32(0.0);
        let d = self.b.ins().fadd(one, e);
        let pos = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        let pos = self.b.ins().bitcast(types::F32X4, le(), pos);
        let num = self.b.ins().bitselect(pos, one, e);
        self.b.ins().fdiv(num, d)
    }

    /// `tanh`: for |x| < 0.625 an odd polynomial (Cephes `tanhf`); beyond,
    /// `±(1 - 2 / (exp(2|x|) + 1))`, which loses nothing to cancellation there.
    pub(super) fn vtanh(&mut self, x: Value) -> Value {
        let z = self.b.ins().fmul(x, x);
        let p = self.vpoly(&TANH, z);
        let p = self.b.ins().fmul(p, z);
        let p = self.b.ins().fmul(p, x);
        let small = self.b.ins().fadd(p, x);
        let a = self.b.ins().fabs(x);
        // The sign of x on each magnitude (for the polynomial, that keeps -0 at -0).
        let sign = self.splat_f32(-0.0);
        let s = self.b.ins().band(x, sign);
        let small = self.b.ins().fabs(small);
        let small = self.b.ins().bor(small, s);
        let a2 = self.b.ins().fadd(a, a);
        let e = self.vexp(a2);
        let one = self.splat_f32(1.0);
        let two = self.splat_f32(2.0);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let big = self.b.ins().fsub(one, q);
        let big = self.b.ins().bor(big, s);
        let limit = self.splat_f32(0.625);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, a, limit);
        let is_small = self.b.ins().bitcast(types::F32X4, le(), is_small);
        self.b.ins().bitselect(is_small, small, big)
    }
}
