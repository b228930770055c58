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
        if offs.is_null() {
            std::arch::asm!(
                "xor {o:e}, {o:e}",
                "2:",
                rows12!(),
                "add {o}, {bs}",
                "dec {n}",
                "jnz 2b",
                a00 = inout(reg) a00 => _,
                a03 = inout(reg) a03 => _,
                a10 = inout(reg) a10 => _,
                a13 = inout(reg) a13 => _,
                rs = in(reg) rs,
                st = in(reg) st,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                bs = in(reg) bs,
                n = inout(reg) kc => _,
                o = out(reg) _,
                inout("zmm0") *x0, inout("zmm1") *x1, inout("zmm2") *x2, inout("zmm3") *x3,
                inout("zmm4") *x4, inout("zmm5") *x5, inout("zmm6") *x6, inout("zmm7") *x7,
                inout("zmm8") *x8, inout("zmm9") *x9, inout("zmm10") *x10, inout("zmm11") *x11,
                inout("zmm12") *x12, inout("zmm13") *x13, inout("zmm14") *x14, inout("zmm15") *x15,
                inout("zmm16") *x16, inout("zmm17") *x17, inout("zmm18") *x18, inout("zmm19") *x19,
                inout("zmm20") *x20, inout("zmm21") *x21, inout("zmm22") *x22, inout("zmm23") *x23,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                options(nostack, readonly),
            );
        } else {
            std::arch::asm!(
                "2:",
                "mov {o}, qword ptr [{offs}]",
                rows12!(),
                "add {offs}, 8",
                "dec {n}",
                "jnz 2b",
                a00 = inout(reg) a00 => _,
                a03 = inout(reg) a03 => _,
                a10 = inout(reg) a10 => _,
                a13 = inout(reg) a13 => _,
                rs = in(reg) rs,
                st = in(reg) st,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                offs = inout(reg) offs => _,
                n = inout(reg) kc => _,
                o = out(reg) _,
                inout("zmm0") *x0, inout("zmm1") *x1, inout("zmm2") *x2, inout("zmm3") *x3,
                inout("zmm4") *x4, inout("zmm5") *x5, inout("zmm6") *x6, inout("zmm7") *x7,
                inout("zmm8") *x8, inout("zmm9") *x9, inout("zmm10") *x10, inout("zmm11") *x11,
                inout("zmm12") *x12, inout("zmm13") *x13, inout("zmm14") *x14, inout("zmm15") *x15,
                inout("zmm16") *x16, inout("zmm17") *x17, inout("zmm18") *x18, inout("zmm19") *x19,
                inout("zmm20") *x20, inout("zmm21") *x21, inout("zmm22") *x22, inout("zmm23") *x23,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                options(nostack, readonly),
            );
        }
    }
}

/// [`k_loop`] for a tile of 8 rows (rows 6 and 7 from `a.a[1]`): 16 accumulators, the first
/// 16 of `acc`.
///
/// # Safety
/// As [`k_loop`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
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
        if offs.is_null() {
            std::arch::asm!(
                "xor {o:e}, {o:e}",
                "2:",
                rows8!(),
                "add {a00}, {st}",
                "add {a03}, {st}",
                "add {a10}, {st}",
                "add {o}, {bs}",
                "dec {n}",
                "jnz 2b",
                a00 = inout(reg) a00 => _,
                a03 = inout(reg) a03 => _,
                a10 = inout(reg) a10 => _,
                rs = in(reg) rs,
                st = in(reg) st,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                bs = in(reg) bs,
                n = inout(reg) kc => _,
                o = out(reg) _,
                inout("zmm0") *x0, inout("zmm1") *x1, inout("zmm2") *x2, inout("zmm3") *x3,
                inout("zmm4") *x4, inout("zmm5") *x5, inout("zmm6") *x6, inout("zmm7") *x7,
                inout("zmm8") *x8, inout("zmm9") *x9, inout("zmm10") *x10, inout("zmm11") *x11,
                inout("zmm12") *x12, inout("zmm13") *x13, inout("zmm14") *x14, inout("zmm15") *x15,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                options(nostack, readonly),
            );
        } else {
            std::arch::asm!(
                "2:",
                "mov {o}, qword ptr [{offs}]",
                rows8!(),
                "add {a00}, {st}",
                "add {a03}, {st}",
                "add {a10}, {st}",
                "add {offs}, 8",
                "dec {n}",
                "jnz 2b",
                a00 = inout(reg) a00 => _,
                a03 = inout(reg) a03 => _,
                a10 = inout(reg) a10 => _,
                rs = in(reg) rs,
                st = in(reg) st,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                offs = inout(reg) offs => _,
                n = inout(reg) kc => _,
                o = out(reg) _,
                inout("zmm0") *x0, inout("zmm1") *x1, inout("zmm2") *x2, inout("zmm3") *x3,
                inout("zmm4") *x4, inout("zmm5") *x5, inout("zmm6") *x6, inout("zmm7") *x7,
                inout("zmm8") *x8, inout("zmm9") *x9, inout("zmm10") *x10, inout("zmm11") *x11,
                inout("zmm12") *x12, inout("zmm13") *x13, inout("zmm14") *x14, inout("zmm15") *x15,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                options(nostack, readonly),
            );
        }
    }
}
