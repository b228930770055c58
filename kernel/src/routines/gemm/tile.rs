//! The k loop of the AVX-512 micro-kernel's full 12×32 tile in assembly: 24 accumulators,
//! two B registers and two broadcast registers, one broadcast and two multiply-adds per row
//! per step. Written by hand because the compiler hoisted every broadcast of a step ahead of
//! its multiply-adds, ran out of the 32 vector registers and rotated accumulators through
//! register moves and a stack slot each step (75 instructions per 24 multiply-adds; the
//! front end, not the FMA units, set the pace). Same multiply-adds in the same order as the
//! portable loop it replaces, so results are identical.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

/// One row of a step: row `r`'s value of A (at `[base + off]`) broadcast into `tmp` and
/// multiplied into its accumulators with B's two vectors (zmm24, zmm25).
#[cfg(target_arch = "x86_64")]
macro_rules! row {
    ($base:literal, $off:literal, $acc0:literal, $acc1:literal, $tmp:literal) => {
        concat!(
            "vbroadcastss ",
            $tmp,
            ", dword ptr [{",
            $base,
            "}",
            $off,
            "]\n",
            "vfmadd231ps ",
            $acc0,
            ", ",
            $tmp,
            ", zmm24\n",
            "vfmadd231ps ",
            $acc1,
            ", ",
            $tmp,
            ", zmm25\n",
        )
    };
}

/// The first eight rows of a step: B's two vectors at `[b0 + o*4]` and `[b1 + o*4]`, then
/// rows 0–2 of A from `a00`, 3–5 from `a03`, 6–7 from `a10` (`rs` bytes apart), each
/// broadcast and multiplied into accumulators 2i and 2i + 1; the row pointers advance after
/// the last row of the step reads them.
#[cfg(target_arch = "x86_64")]
macro_rules! rows8 {
    () => {
        concat!(
            "vmovups zmm24, zmmword ptr [{b0} + {o}*4]\n",
            "vmovups zmm25, zmmword ptr [{b1} + {o}*4]\n",
            row!("a00", "", "zmm0", "zmm1", "zmm26"),
            row!("a00", " + {rs}", "zmm2", "zmm3", "zmm27"),
            row!("a00", " + {rs}*2", "zmm4", "zmm5", "zmm26"),
            row!("a03", "", "zmm6", "zmm7", "zmm27"),
            row!("a03", " + {rs}", "zmm8", "zmm9", "zmm26"),
            row!("a03", " + {rs}*2", "zmm10", "zmm11", "zmm27"),
            row!("a10", "", "zmm12", "zmm13", "zmm26"),
            row!("a10", " + {rs}", "zmm14", "zmm15", "zmm27"),
        )
    };
}

/// A step of the 8-row tile: [`rows8`], then its three row pointers advance.
#[cfg(target_arch = "x86_64")]
macro_rules! step8 {
    () => {
        concat!(
            rows8!(),
            "add {a00}, {st}\n",
            "add {a03}, {st}\n",
            "add {a10}, {st}\n",
        )
    };
}

/// A step of the 12-row tile: [`rows8`], row 8 from `a10`, rows 9–11 from `a13`, then the
/// four row pointers advance.
#[cfg(target_arch = "x86_64")]
macro_rules! rows12 {
    () => {
        concat!(
            rows8!(),
            row!("a10", " + {rs}*2", "zmm16", "zmm17", "zmm26"),
            row!("a13", "", "zmm18", "zmm19", "zmm27"),
            row!("a13", " + {rs}", "zmm20", "zmm21", "zmm26"),
            row!("a13", " + {rs}*2", "zmm22", "zmm23", "zmm27"),
            "add {a13}, {st}\n",
            "add {a00}, {st}\n",
            "add {a03}, {st}\n",
            "add {a10}, {st}\n",
        )
    };
}

/// The k loop around a step's text, for either way B's steps are found: at `[offs]`, one
/// offset per step (when `offs` is not null), else `bs` elements apart. Operands: the A row
/// pointers named in the step, `rs`, `st`, B's two panels, the step count and the
/// accumulators (ident and register); zmm24–27 are the step's scratch.
#[cfg(target_arch = "x86_64")]
macro_rules! k_asm {
    (@call [$($text:expr),*], [$($a:ident),*], [$($b:tt)*], [$($x:ident $r:tt),*],
     $rs:ident, $st:ident, $bp:ident, $n:ident) => {
        std::arch::asm!(
            $($text,)*
            $($a = inout(reg) $a => _,)*
            rs = in(reg) $rs,
            st = in(reg) $st,
            b0 = in(reg) $bp[0],
            b1 = in(reg) $bp[1],
            $($b)*
            n = inout(reg) $n => _,
            o = out(reg) _,
            $(inout($r) *$x,)*
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            options(nostack, readonly),
        )
    };
    ($step:expr, $a:tt, $acc:tt, $rs:ident, $st:ident, $bp:ident, $bs:ident, $offs:ident,
     $n:ident) => {
        if $offs.is_null() {
            k_asm!(
                @call ["xor {o:e}, {o:e}", "2:", $step, "add {o}, {bs}", "dec {n}", "jnz 2b"],
                $a, [bs = in(reg) $bs,], $acc, $rs, $st, $bp, $n
            )
        } else {
            k_asm!(
                @call ["2:", "mov {o}, qword ptr [{offs}]", $step, "add {offs}, 8", "dec {n}", "jnz 2b"],
                $a, [offs = inout(reg) $offs => _,], $acc, $rs, $st, $bp, $n
            )
        }
    };
}

/// Where the rows of A start and how they advance, in bytes: rows `row` elements apart,
/// steps `step` apart, panel `p` at `a[p]`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(in crate::routines) struct TileRows {
    pub(in crate::routines) a: [*const f32; 2],
    pub(in crate::routines) row: usize,
    pub(in crate::routines) step: usize,
}

/// Adds `kc` steps of the 12×32 tile into `acc` (row i's two vectors at 2i, 2i + 1). Step kk
/// of B is at `b[q] + offs[kk]` when `offs` is given, else at `b[q] + kk·bs`.
///
/// # Safety
/// The CPU has AVX-512F; A's rows hold `kc` steps, B's two panels `kc` steps of 16 values at
/// the offsets given (`offs` has `kc` entries when not null); `kc > 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn k_loop(
    kc: usize,
    a: TileRows,
    b: [*const f32; 2],
    bs: usize,
    offs: *const usize,
    acc: &mut [__m512; 24],
) {
    let rs = a.row * 4;
    let st = a.step * 4;
    let a00 = a.a[0];
    let a03 = a00.wrapping_add(3 * a.row);
    let a10 = a.a[1];
    let a13 = a10.wrapping_add(3 * a.row);
    let [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15, x16, x17, x18, x19, x20, x21, x22, x23] =
        acc;
    // SAFETY: the caller guarantees the addresses read; the asm writes only its operands and
    // the vector registers it names as clobbered.
    unsafe {
        k_asm!(
            rows12!(),
            [a00, a03, a10, a13],
            [x0 "zmm0", x1 "zmm1", x2 "zmm2", x3 "zmm3", x4 "zmm4", x5 "zmm5", x6 "zmm6",
             x7 "zmm7", x8 "zmm8", x9 "zmm9", x10 "zmm10", x11 "zmm11", x12 "zmm12",
             x13 "zmm13", x14 "zmm14", x15 "zmm15", x16 "zmm16", x17 "zmm17", x18 "zmm18",
             x19 "zmm19", x20 "zmm20", x21 "zmm21", x22 "zmm22", x23 "zmm23"],
            rs, st, b, bs, offs, kc
        )
    }
}

/// [`k_loop`] for a tile of 8 rows (rows 6 and 7 from `a.a[1]`): 16 accumulators, the first
/// 16 of `acc`.
///
/// # Safety
/// As [`k_loop`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::routines) unsafe fn k_loop8(
    kc: usize,
    a: TileRows,
    b: [*const f32; 2],
    bs: usize,
    offs: *const usize,
    acc: &mut [__m512; 24],
) {
    let rs = a.row * 4;
    let st = a.step * 4;
    let a00 = a.a[0];
    let a03 = a00.wrapping_add(3 * a.row);
    let a10 = a.a[1];
    let [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15, ..] = acc;
    // SAFETY: the caller guarantees the addresses read; the asm writes only its operands and
    // the vector registers it names as clobbered.
    unsafe {
        k_asm!(
            step8!(),
            [a00, a03, a10],
            [x0 "zmm0", x1 "zmm1", x2 "zmm2", x3 "zmm3", x4 "zmm4", x5 "zmm5", x6 "zmm6",
             x7 "zmm7", x8 "zmm8", x9 "zmm9", x10 "zmm10", x11 "zmm11", x12 "zmm12",
             x13 "zmm13", x14 "zmm14", x15 "zmm15"],
            rs, st, b, bs, offs, kc
        )
    }
}

/// Where [`k_loop_store`] puts a tile: row r's vector q as up to two runs of lanes `(base,
/// lanes)` (lane `l` of the run to `out + r·row + base + l`; no lanes for none), through the
/// epilogue `epi` without an activation or a QDQ pair after it (per-row operands from the
/// tile's first row on; its residual laid out as the output, from `res`).
#[cfg(target_arch = "x86_64")]
pub(in crate::routines) struct TileOut<'a> {
    pub(in crate::routines) out: *mut f32,
    pub(in crate::routines) res: *const f32,
    pub(in crate::routines) runs: [[(isize, u16); 2]; 2],
    pub(in crate::routines) row: usize,
    pub(in crate::routines) epi: &'a crate::routines::epilogue::Epilogue,
}

/// Row `r`'s two vectors through the epilogue (no activation; its per-row coefficients
/// loaded once) to their places.
///
/// # Safety
/// The CPU has AVX-512F (only called from AVX-512 code); as [`k_loop_store`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn put_row(o: &TileOut, r: usize, v: [__m512; 2]) {
    use crate::routines::epilogue::avx512::{coefs, linear};
    use std::arch::x86_64::*;
    // SAFETY: forwarded.
    unsafe {
        let st = coefs(o.epi, r, 0, !0);
        let (out, res) = (o.out.add(r * o.row), o.res.wrapping_add(r * o.row));
        for (v, &[(b0, m0), (b1, m1)]) in v.into_iter().zip(&o.runs) {
            if m0 == 0xffff {
                let val = linear(o.epi, v, st, res.wrapping_offset(b0), !0);
                _mm512_storeu_ps(out.wrapping_offset(b0), val);
                continue;
            }
            // Across a row's end: the lanes of each row apart.
            for (b, m) in [(b0, m0), (b1, m1)] {
                let val = linear(o.epi, v, st, res.wrapping_offset(b), m);
                _mm512_mask_storeu_ps(out.wrapping_offset(b), m, val);
            }
        }
    }
}

/// [`k_loop`] (12 rows) or [`k_loop8`] (`rows` 8) from zero, its accumulators stored through
/// the epilogue straight from their registers: no trip through memory between the k loop
/// and the stores (with few steps, a 3-channel conv's 27, that trip and the generic store
/// loop cost as much as the multiply-adds).
///
/// # Safety
/// As [`k_loop`]; `rows` is 8 or 12; the tile's rows' two vectors (and their residual) lie
/// inside the output, the rows inside the epilogue's per-row operands.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(in crate::routines) unsafe fn k_loop_store(
    kc: usize,
    a: TileRows,
    b: [*const f32; 2],
    bs: usize,
    offs: *const usize,
    rows: usize,
    o: &TileOut,
) {
    let mut acc = [std::arch::x86_64::_mm512_setzero_ps(); 24];
    // SAFETY: forwarded; inlined, the accumulators stay in their registers.
    unsafe {
        match rows {
            12 => k_loop(kc, a, b, bs, offs, &mut acc),
            _ => k_loop8(kc, a, b, bs, offs, &mut acc),
        }
        let [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15, x16, x17, x18, x19, x20, x21, x22, x23] =
            acc;
        put_row(o, 0, [x0, x1]);
        put_row(o, 1, [x2, x3]);
        put_row(o, 2, [x4, x5]);
        put_row(o, 3, [x6, x7]);
        put_row(o, 4, [x8, x9]);
        put_row(o, 5, [x10, x11]);
        put_row(o, 6, [x12, x13]);
        put_row(o, 7, [x14, x15]);
        if rows == 12 {
            put_row(o, 8, [x16, x17]);
            put_row(o, 9, [x18, x19]);
            put_row(o, 10, [x20, x21]);
            put_row(o, 11, [x22, x23]);
        }
    }
}
