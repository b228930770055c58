//! AMX tiles: tmm0–3 the 2×2 blocks of sums, tmm4–5 A's two row halves, tmm6–7 the
//! panels.

use std::arch::asm;

use super::{KB, NR};

/// Whether the CPU has AMX-INT8 and the OS grants this process its tile data.
pub(super) fn available() -> bool {
    // Leaf 7 is read only where leaf 0 reports it.
    let max = std::arch::x86_64::__cpuid(0).eax;
    let amx = max >= 7 && {
        let r = std::arch::x86_64::__cpuid_count(7, 0);
        r.edx & (1 << 24) != 0 && r.edx & (1 << 25) != 0
    };
    if !amx {
        return false;
    }
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA (Linux 5.16 and later).
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a request for a permission; no memory is passed.
        let r = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The tile configuration: palette 1, eight tiles of 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

/// Loads the configuration.
///
/// # Safety
/// AMX is available (see [`available`]); [`release`] follows on this thread.
pub(super) unsafe fn configure() {
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    // SAFETY: a valid configuration, 64 bytes.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
}

/// Releases the tiles.
///
/// # Safety
/// After [`configure`].
pub(super) unsafe fn release() {
    // SAFETY: forwarded.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// 32 rows of A (`kp` bytes apart) by two panels into `acc`: [`windows`] whose steps
/// follow each other along the rows.
///
/// # Safety
/// As `super::block`, tiles configured.
pub(super) unsafe fn block(a: *const u8, b: *const i8, kp: usize, acc: &mut [i32]) {
    let steps = (0..kp / KB).map(|kk| kk * KB);
    // SAFETY: the rows hold kp bytes (kp is a multiple of 64), 32 of them.
    unsafe { windows(a, kp, steps, b, kp, acc, false) }
}

/// 32 rows of A read where they are (`rs` bytes apart, `k` bytes each) by two panels
/// into `acc`: every whole step of k in place, the part step left (when `k` is not a
/// multiple of 64) from `tail`, the rows' last bytes copied, 64 bytes apart with zeros
/// after (the panels' padded steps are zeros: any byte there would do, but past A's
/// last row none is readable). B streamed past L1 where `stream`.
///
/// # Safety
/// Tiles configured; the 32 rows readable for `k` bytes, `tail` for 32 × 64 when `k`
/// is not a multiple of 64; the panels `kpad(k)` long; `acc` holds 32 rows of 32 i32s.
pub(super) unsafe fn rows(
    (a, rs, k): (*const u8, usize, usize),
    tail: *const u8,
    b: *const i8,
    acc: &mut [i32],
    stream: bool,
) {
    let (whole, kp) = (k / KB, k.div_ceil(KB) * KB);
    // SAFETY: forwarded.
    unsafe {
        zero();
        run(a, rs, (0..whole).map(|kk| kk * KB), (b, kp, 0), stream);
        if whole * KB < k {
            run(tail, KB, std::iter::once(0), (b, kp, whole), stream);
        }
        store(acc);
    }
}

/// 32 windows from `a` (`ci` bytes apart; step `s` of each `steps[s]` bytes on) by two
/// panels into `acc`, B streamed past L1 where `stream`.
///
/// # Safety
/// Tiles configured; every window's steps readable (64 bytes each), the panels `kp`
/// long, one 64-byte step a step; `acc` holds 32 rows of 32 i32s.
pub(super) unsafe fn windows(
    a: *const u8,
    ci: usize,
    steps: impl Iterator<Item = usize>,
    b: *const i8,
    kp: usize,
    acc: &mut [i32],
    stream: bool,
) {
    // SAFETY: forwarded.
    unsafe {
        zero();
        run(a, ci, steps, (b, kp, 0), stream);
        store(acc);
    }
}

/// Zeros the four tiles of sums.
///
/// # Safety
/// Tiles configured.
unsafe fn zero() {
    // SAFETY: tiles configured (the caller's).
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// Adds 32 windows from `a` (`ci` bytes apart, steps at `steps`) by two panels `kp`
/// long from their step `first` on to the tiles of sums; B's tiles loaded with the
/// hint that they are not read again (`tileloaddt1`) where `stream`.
///
/// # Safety
/// As [`windows`], for these steps of the panels.
unsafe fn run(
    a: *const u8,
    ci: usize,
    steps: impl Iterator<Item = usize>,
    (b, kp, first): (*const i8, usize, usize),
    stream: bool,
) {
    let b0 = b.wrapping_add(first * KB * NR);
    let b1 = b0.wrapping_add(NR * kp);
    let a1 = a.wrapping_add(16 * ci);
    // SAFETY: the loads stay inside the windows (the caller's) and the panels.
    unsafe {
        for (kk, at) in steps.enumerate() {
            macro_rules! step {
                ($load_b:literal) => {
                    asm!(
                        "tileloadd tmm4, [{a0} + {ci}*1]",
                        "tileloadd tmm5, [{a1} + {ci}*1]",
                        concat!($load_b, " tmm6, [{b0} + {s}*1]"),
                        concat!($load_b, " tmm7, [{b1} + {s}*1]"),
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a.add(at),
                        a1 = in(reg) a1.add(at),
                        b0 = in(reg) b0.add(kk * KB * NR),
                        b1 = in(reg) b1.add(kk * KB * NR),
                        ci = in(reg) ci,
                        s = in(reg) 4 * NR,
                        options(nostack, readonly)
                    )
                };
            }
            if stream {
                step!("tileloaddt1");
            } else {
                step!("tileloadd");
            }
        }
    }
}

/// The four tiles of sums into `acc` (32 rows of 32 i32s).
///
/// # Safety
/// Tiles configured and computed.
unsafe fn store(acc: &mut [i32]) {
    let c = acc.as_mut_ptr();
    // SAFETY: inside `acc`.
    unsafe {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(NR),
            c2 = in(reg) c.add(16 * 2 * NR),
            c3 = in(reg) c.add(16 * 2 * NR + NR),
            s = in(reg) 2 * NR * 4,
            options(nostack)
        );
    }
}
