//! f32 matrix products for the `gemm` routine (`Stmt::Call`): operands packed into panels, a register-tiled
//! micro-kernel (12×32 in 16-lane registers with AVX-512, 6×16 with AVX2 and FMA, chosen at run
//! time by the CPU; portable otherwise; the vector kernels agree bit for bit), and large products split over the calling thread and its helpers
//! ([`crate::threads`]) by column panels or row blocks. Results do not depend on the thread count: every element sums over k
//! in the same order.

use super::epilogue::{self, Epilogue};

mod avx2;
mod narrow;
pub mod nbits;
mod thin;
pub(super) mod tile;
use avx2::micro_avx2;
use thin::{thin, thin_packed};

pub(super) const MR: usize = 6;
pub(crate) const NR: usize = 16;
pub(crate) const KC: usize = 256;
const MC: usize = 96;

/// An operand: element (i, j) is at `p[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) p: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

// SAFETY: operands are only read, and the caller keeps them alive for the call.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The matrix from column `j0` on.
    fn columns_from(self, j0: usize) -> Mat {
        Mat {
            p: self.p.wrapping_offset(j0 as isize * self.cs),
            ..self
        }
    }

    /// The matrix from row `i0` on.
    fn rows_from(self, i0: usize) -> Mat {
        Mat {
            p: self.p.wrapping_offset(i0 as isize * self.rs),
            ..self
        }
    }

    /// # Safety
    /// (i, j) must be inside the operand.
    unsafe fn at(&self, i: usize, j: usize) -> f32 {
        unsafe { *self.p.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, `c` dense row-major; `a` and `b` strided. A convenience for
/// Rust callers (kernels call [`kiln_sgemm_packed`] through the routine table).
///
/// # Safety
/// Every element addressed through the strides must be readable, `c` writable for `m*n`
/// elements and not overlapping the operands.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    a: *const f32,
    a_rs: i64,
    a_cs: i64,
    b: *const f32,
    b_rs: i64,
    b_cs: i64,
    c: *mut f32,
    m: i64,
    n: i64,
    k: i64,
) {
    // SAFETY: forwarded.
    unsafe {
        product(
            a,
            b,
            std::ptr::null(),
            c,
            a_rs,
            a_cs,
            b_rs,
            b_cs,
            n,
            m,
            n,
            k,
            &Epilogue::NONE,
        )
    }
}

/// [`sgemm`] where `bp`, unless null, is `b` already packed by [`pack_b`] for this `k`
/// and `n` (then B is not packed per call, and `b` itself is never read), and rows of C are
/// `ldc >= n` elements apart.
///
/// # Safety
/// As [`sgemm`], C holding `m` rows `ldc` apart; a non-null `bp` holds
/// [`packed_len`]`(k, n)` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_sgemm_packed(
    a: *const f32,
    b: *const f32,
    bp: *const f32,
    c: *mut f32,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
    a_rs: i64,
    a_cs: i64,
    b_rs: i64,
    b_cs: i64,
    ldc: i64,
    m: i64,
    n: i64,
    k: i64,
    cols: i64,
    act: i64,
    lo: f32,
    hi: f32,
    pre_s: f32,
    pre_z: f32,
    pre_lo: f32,
    pre_hi: f32,
    pre_d: f32,
    pre_at: f32,
    post_s: f32,
    post_z: f32,
    post_lo: f32,
    post_hi: f32,
    post_d: f32,
) {
    let epi = Epilogue::new(
        (scale, shift, res, scale2),
        (lo, hi),
        cols,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    // SAFETY: forwarded.
    unsafe { product(a, b, bp, c, a_rs, a_cs, b_rs, b_cs, ldc, m, n, k, &epi) }
}

/// [`kiln_sgemm_packed`] with its epilogue: each element of C is stored through `epi` (row
/// i of C its row, `i * ldc + j` its offset).
///
/// # Safety
/// As [`kiln_sgemm_packed`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    a: *const f32,
    b: *const f32,
    bp: *const f32,
    c: *mut f32,
    a_rs: i64,
    a_cs: i64,
    b_rs: i64,
    b_cs: i64,
    ldc: i64,
    m: i64,
    n: i64,
    k: i64,
    epi: &Epilogue,
) {
    let (m, n, k) = (m.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
    let ldc = (ldc.max(0) as usize).max(n);
    if m == 0 || n == 0 {
        return;
    }
    let a = Mat {
        p: a,
        rs: a_rs as isize,
        cs: a_cs as isize,
    };
    let b = Mat {
        p: b,
        rs: b_rs as isize,
        cs: b_cs as isize,
    };
    let bsrc = Panels { b, packed: bp };
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of c holds n elements.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
        // SAFETY: C is inside the output.
        unsafe { epi.block(c, ldc, m, n) };
        return;
    }
    if !bp.is_null() && (m <= 4 || m * n * k <= 4096) {
        // Few rows, or a tiny product, against B packed ahead of time: its panels streamed
        // (the original B is never read when it was packed).
        // SAFETY: forwarded from the caller.
        unsafe { thin_packed(a, bp, c, ldc, m, n, k, epi) };
        return;
    }
    if n <= narrow::MOST && a.cs == 1 && bp.is_null() {
        // A few columns: dot products of A's rows, where a packed tile would be mostly
        // zeros (a conv over a short signal, 128 filters of 387 taps at 4 positions: 15.3 →
        // 5.2 µs).
        // SAFETY: forwarded from the caller.
        unsafe { narrow::narrow(a, b, c, ldc, m, n, k, epi) };
        return;
    }
    if m * n * k <= 256 {
        // Too small to pay for packing (the packed tiles are faster from about 256
        // multiply-adds: 6×8×8 0.18 → 0.13 µs, 5×5×5 0.09 → 0.14).
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for l in 0..k {
                    // SAFETY: inside the operands.
                    acc += unsafe { a.at(i, l) * b.at(l, j) };
                }
                // SAFETY: (i, j) is inside c.
                unsafe { *c.add(i * ldc + j) = acc };
            }
        }
        // SAFETY: C is inside the output.
        unsafe { epi.block(c, ldc, m, n) };
        return;
    }
    if m <= 4 && (b.cs == 1 || b.rs == 1) {
        // Matrix-vector shapes: packing B would cost as much as the product.
        // SAFETY: forwarded from the caller.
        unsafe {
            thin(a, b, c, ldc, m, n, k);
            epi.block(c, ldc, m, n);
        }
        return;
    }
    let panels = n.div_ceil(NR);
    // Products of 2M MACs and up (about 12 µs on one core) are split, into at most one task
    // per thread (by columns when there are enough panels, else by rows). Smaller ones run
    // here: a helper's half lands in its own core's cache, and a recurrence whose steps read
    // it back one row block at a time (the LSTM's input projections, 1M MACs each) ran
    // slower at 2 threads than at 1; moe_ffn's 512K products lose the third they gained.
    // Without helpers lent by the runtime, everything runs on this thread.
    let t = if m * n * k >= 1 << 21 {
        crate::threads::helpers() + 1
    } else {
        1
    };
    let c_addr = c as usize;
    if t == 1 {
        // SAFETY: forwarded from the caller.
        unsafe { columns(a, bsrc, c_addr as *mut f32, ldc, m, n, k, 0, panels, epi) };
        return;
    }
    let row_blocks = m.div_ceil(MR);
    let by_rows = panels < 2 * t && row_blocks >= 2 * t;
    let parts = if by_rows {
        t.min(row_blocks)
    } else {
        t.min(panels)
    };
    crate::threads::parallel_for(parts, |w| {
        if by_rows {
            let (r0, r1) = (
                row_blocks * w / parts * MR,
                (row_blocks * (w + 1) / parts * MR).min(m),
            );
            let a = Mat {
                p: a.p.wrapping_offset(r0 as isize * a.rs),
                ..a
            };
            // SAFETY: each task writes only its own rows; A's rows r0..r1 are inside A.
            unsafe {
                columns(
                    a,
                    bsrc,
                    (c_addr as *mut f32).add(r0 * ldc),
                    ldc,
                    r1 - r0,
                    n,
                    k,
                    0,
                    panels,
                    &epi.from(r0, 0, r0 * ldc),
                )
            }
        } else {
            let (lo, hi) = (panels * w / parts, panels * (w + 1) / parts);
            // SAFETY: each task writes only the columns of its own panels.
            unsafe { columns(a, bsrc, c_addr as *mut f32, ldc, m, n, k, lo, hi, epi) }
        }
    });
}

/// The columns of panels `lo..hi` of the product.
#[allow(clippy::too_many_arguments)]
/// The right operand: a matrix, and possibly its panels packed ahead of time.
#[derive(Clone, Copy)]
struct Panels {
    b: Mat,
    packed: *const f32,
}

// SAFETY: both are only read, and the caller keeps them alive for the call.
unsafe impl Send for Panels {}
unsafe impl Sync for Panels {}

/// Elements of B packed for a `k`×`n` product: zero-padded panels of NR columns per block of
/// KC steps.
pub fn packed_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR) * NR
}

/// Packs B (element (l, j) at `b[l * rs + j * cs]`, `l < k`, `j < n`) the way products pack it
/// per call: block `pc` (every KC steps) holds the panels of NR columns in turn, k-major, from
/// element `pc * panels * NR`. `None` when an element would be outside `b`.
pub fn pack_b(b: &[f32], rs: i64, cs: i64, k: usize, n: usize) -> Option<Vec<f32>> {
    if k == 0 || n == 0 {
        return Some(Vec::new());
    }
    let last = (k as i64 - 1).checked_mul(rs)? + (n as i64 - 1).checked_mul(cs)?;
    if rs < 0 || cs < 0 || last >= b.len() as i64 {
        return None;
    }
    let panels = n.div_ceil(NR);
    let mut out = vec![0f32; packed_len(k, n)];
    let x = Mat {
        p: b.as_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    };
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        for p in 0..panels {
            let dst = &mut out[pc * panels * NR + p * NR * kc..][..NR * kc];
            let jb = p * NR;
            // SAFETY: every element addressed is inside `b` (checked above).
            unsafe { pack::<NR>(x, pc, jb, kc, NR.min(n - jb), dst) };
        }
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    a: Mat,
    bsrc: Panels,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    lo: usize,
    hi: usize,
    epi: &Epilogue,
) {
    let b = bsrc.b;
    // The epilogue of the tile at (i, j), on the last block of k only.
    let last = k.saturating_sub(1) / KC * KC;
    let tile_epi = |pc: usize, i: usize, j: usize| {
        (pc == last && !epi.is_none()).then_some((epi, (i, j, i * ldc + j)))
    };
    let avx = crate::avx2_fma();
    let wide = wide();
    // The micro-kernel reads full row tiles of a row-major A in place (the same values in
    // the same order as packed): packing them cost a copy of A per call, 5-8% of a
    // pointwise conv (1024 → 256 channels at 14×14: 0.89 → 0.83 ms), and nothing measurable
    // was gained by packing even for 256-row products (146 against 147 GFLOP/s).
    let direct = avx && a.cs == 1 && a.rs > 0;
    let j0 = lo * NR;
    let j1 = (hi * NR).min(n);
    let np = hi - lo;
    let kc_max = KC.min(k);
    // Packing buffers are kept per thread: allocating (and zeroing) them per call costs as
    // much as packing for small products. Every element read is written by packing first.
    thread_local! {
        static BUFS: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    }
    let (mut bp, mut ap) = BUFS.with(|b| b.take());
    let (bn, an) = (np * NR * kc_max, MC.min(m).div_ceil(MR) * MR * kc_max);
    if bp.len() < bn {
        bp.resize(bn, 0.0);
    }
    if ap.len() < an {
        ap.resize(an, 0.0);
    }
    let mut tile = [0f32; MR * NR];
    /// The wide micro-kernel for these panels, with steps NR apart (packed) as a constant.
    ///
    /// # Safety
    /// As [`micro_avx512`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn wide_for<const R: usize, const C: usize>(
        kc: usize,
        a: [ARows; R],
        b: [*const f32; C],
        bs: [usize; C],
        out: Out<'_>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            let none = std::ptr::null();
            if bs.iter().all(|&s| s == NR) {
                micro_avx512::<R, C, PACKED>(kc, a, b, bs, none, out)
            } else {
                micro_avx512::<R, C, ROWS>(kc, a, b, bs, none, out)
            }
        }
    }
    // A contraction of few rows over a row-major B (a pointwise conv's image): its
    // whole panels are read in place, rows `b.rs` apart, as packing them would cost a copy
    // of B for few multiply-adds per element; only a last partial panel is packed. (Not
    // where rows lie a multiple of 4 KiB apart: their lines would compete for one cache set.)
    let b_direct = avx
        && bsrc.packed.is_null()
        && b.cs == 1
        && b.rs > 0
        && k <= DIRECT_B_STEPS
        && m <= DIRECT_B_K
        && (b.rs * 4) % 4096 != 0
        && (b.rs as usize * 4 * kc_max <= DIRECT_B_SPAN || m <= DIRECT_B_K / 2);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        // Pack B[pc.., j0..j1] as panels of NR columns, k-major, zero-padded (unless that
        // was done ahead of time).
        let b_block: &[f32] = if bsrc.packed.is_null() {
            for p in 0..np {
                let dst = &mut bp[p * NR * kc..][..NR * kc];
                let jb = j0 + p * NR;
                if b_direct && jb + NR <= j1 {
                    continue;
                }
                // SAFETY: forwarded from the caller (the block is inside b).
                unsafe { pack::<NR>(b, pc, jb, kc, NR.min(j1 - jb), dst) };
            }
            &bp[..np * NR * kc]
        } else {
            let panels = n.div_ceil(NR);
            // SAFETY: the packed operand holds every block's panels (see `pack_b`).
            unsafe {
                std::slice::from_raw_parts(
                    bsrc.packed.add(pc * panels * NR + lo * NR * kc),
                    np * NR * kc,
                )
            }
        };
        // Panel `jp` of the block: where its first step is, and how far apart steps are.
        let b_panel = |jp: usize| -> (*const f32, usize) {
            let jb = j0 + jp * NR;
            if b_direct && jb + NR <= j1 {
                (
                    b.p.wrapping_offset(pc as isize * b.rs + jb as isize),
                    b.rs as usize,
                )
            } else {
                (b_block[jp * NR * kc..].as_ptr(), NR)
            }
        };
        for ic in (0..m).step_by(MC) {
            let mc = MC.min(m - ic);
            let mp = mc.div_ceil(MR);
            for p in 0..mp {
                let ib = ic + p * MR;
                if direct && ic + mc - ib >= MR {
                    // Read in place by the micro-kernel.
                    continue;
                }
                let dst = &mut ap[p * MR * kc..][..MR * kc];
                let at = Mat {
                    p: a.p,
                    rs: a.cs,
                    cs: a.rs,
                };
                // SAFETY: A transposed: (kk, i) is a[i, kk]; the block is inside a.
                unsafe { pack::<MR>(at, pc, ib, kc, MR.min(ic + mc - ib), dst) };
            }
            // A's rows from row `i`, read in place (a row-major A).
            let in_place = |i: usize| ARows {
                p: a.p.wrapping_offset(i as isize * a.rs + pc as isize),
                row: a.rs as usize,
                step: 1,
            };
            // The micro-kernel's rows of A from row `i`: read in place where a whole panel's
            // rows are there, else the packed panel holding row `i` (which starts it: only
            // tiles of A read in place start between panels).
            let a_rows = |i: usize| match direct && ic + mc - i >= MR {
                true => in_place(i),
                false => ARows::packed(&ap[(i - ic) / MR * MR * kc..]),
            };
            if wide {
                // Tiles of two A panels by two B panels (12×32: 24 registers of 16 lanes),
                // smaller at the edges.
                for jp in (0..np).step_by(2) {
                    let j = j0 + jp * NR;
                    let (b0, s0) = b_panel(jp);
                    let (b1, s1) = b_panel((jp + 1).min(np - 1));
                    // A direct tile of 8 rows by two B panels a stride alike reads its last
                    // two rows in place too: `accumulate` runs such a tile with the 8-row
                    // assembly, which reads no further (any other tile reads all six rows
                    // of the second panel, so that one stays packed).
                    let eight = direct && jp + 1 < np && s0 == s1;
                    // Rows in tiles of 12, but for 4 left over: two tiles of 8 (the
                    // assembly's) where A is read in place, not a tile of 4 by the portable
                    // loop (256 filters: 20 tiles of 12 and 2 of 8).
                    let split = eight && mc % (2 * MR) == 4 && mc > 2 * MR;
                    let mut i = ic;
                    while i < ic + mc {
                        let left = ic + mc - i;
                        let rows = match split && left == 2 * MR + 4 {
                            true => MR + 2,
                            false => (2 * MR).min(left),
                        };
                        let out = Out {
                            // SAFETY: (i, j) is inside c, and so is the tile from it.
                            p: unsafe { c.add(i * ldc + j) },
                            ld: ldc,
                            add: pc > 0,
                            rows,
                            cols: (2 * NR).min(j1 - j),
                            epi: tile_epi(pc, i, j),
                            panel: NR,
                        };
                        let a0 = a_rows(i);
                        let a1 = match (eight && rows == MR + 2, rows > MR) {
                            (true, _) => in_place(i + MR),
                            (false, true) => a_rows(i + MR),
                            (false, false) => a0,
                        };
                        // SAFETY: the CPU has AVX-512; A and the panels hold kc steps.
                        unsafe {
                            match (rows > MR, jp + 1 < np) {
                                (true, true) => wide_for(kc, [a0, a1], [b0, b1], [s0, s1], out),
                                (true, false) => wide_for(kc, [a0, a1], [b0], [s0], out),
                                (false, true) => wide_for(kc, [a0], [b0, b1], [s0, s1], out),
                                (false, false) => wide_for(kc, [a0], [b0], [s0], out),
                            }
                        }
                        i += rows;
                    }
                }
                continue;
            }
            for jp in 0..np {
                let j = j0 + jp * NR;
                let nr = NR.min(j1 - j);
                for ip in 0..mp {
                    let i = ic + ip * MR;
                    let mr = MR.min(ic + mc - i);
                    if avx {
                        // The tile goes straight to C (stored, or added after the first block
                        // of k); only its `mr` rows and `nr` columns inside C.
                        let out = Out {
                            // SAFETY: (i, j) is inside c, and so is the mr×nr tile from it.
                            p: unsafe { c.add(i * ldc + j) },
                            ld: ldc,
                            add: pc > 0,
                            rows: mr,
                            cols: nr,
                            epi: tile_epi(pc, i, j),
                            panel: NR,
                        };
                        let (bq, bs) = b_panel(jp);
                        // SAFETY: the CPU has AVX2 and FMA; A and the panel hold kc steps.
                        unsafe {
                            if bs == NR {
                                micro_avx2::<true>(kc, a_rows(i), bq, bs, out)
                            } else {
                                micro_avx2::<false>(kc, a_rows(i), bq, bs, out)
                            }
                        };
                        continue;
                    }
                    let (a_panel, b_panel) = (&ap[ip * MR * kc..], &b_block[jp * NR * kc..]);
                    micro_portable(kc, a_panel, b_panel, &mut tile);
                    for ii in 0..mr {
                        for jj in 0..nr {
                            // SAFETY: (i+ii, j+jj) is inside c.
                            let dst = unsafe { &mut *c.add((i + ii) * ldc + j + jj) };
                            let v = tile[ii * NR + jj];
                            if pc == 0 {
                                *dst = v;
                            } else {
                                *dst += v;
                            }
                        }
                    }
                    if let Some((e, at)) = tile_epi(pc, i, j) {
                        // SAFETY: the tile is inside C.
                        unsafe { e.block_at(at, c.add(i * ldc + j), ldc, mr, nr) };
                    }
                }
            }
        }
    }
    BUFS.with(|b| b.set((bp, ap)));
}

#[cfg(test)]
thread_local! {
    /// Tests compare the AVX-512 micro-kernel with the AVX2 one on the same machine.
    static AVX2_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether products use the AVX-512 micro-kernel.
fn wide() -> bool {
    #[cfg(test)]
    if AVX2_ONLY.with(|c| c.get()) {
        return false;
    }
    crate::avx512()
}

/// Packs `x[r0 + kk, c0 + jj]` for `kk < kc`, `jj < w` into `dst[kk * width + jj]`, zeros for
/// `w <= jj < width`.
///
/// # Safety
/// The block must be inside `x`; `dst` holds `kc * width` elements.
pub(super) unsafe fn pack<const WIDTH: usize>(
    x: Mat,
    r0: usize,
    c0: usize,
    kc: usize,
    w: usize,
    dst: &mut [f32],
) {
    let width = WIDTH;
    if x.cs == 1 {
        // Rows contiguous: one copy per row.
        for kk in 0..kc {
            // SAFETY: row r0+kk holds w elements from column c0.
            let src = unsafe {
                std::slice::from_raw_parts(x.p.offset((r0 + kk) as isize * x.rs + c0 as isize), w)
            };
            let d = &mut dst[kk * width..][..width];
            if w == WIDTH {
                // A fixed-size copy compiles to a few vector moves (not a memcpy call).
                let s: &[f32; WIDTH] = src.try_into().expect("w == WIDTH");
                let d: &mut [f32; WIDTH] = d.try_into().expect("a row of WIDTH");
                *d = *s;
            } else {
                d[..w].copy_from_slice(src);
                d[w..].fill(0.0);
            }
        }
    } else if x.rs == 1 {
        // Columns contiguous: read each column along k.
        for jj in 0..width {
            if jj < w {
                // SAFETY: column c0+jj holds kc elements from row r0.
                let src = unsafe {
                    std::slice::from_raw_parts(
                        x.p.offset((c0 + jj) as isize * x.cs + r0 as isize),
                        kc,
                    )
                };
                for (kk, &v) in src.iter().enumerate() {
                    dst[kk * width + jj] = v;
                }
            } else {
                for kk in 0..kc {
                    dst[kk * width + jj] = 0.0;
                }
            }
        }
    } else {
        for kk in 0..kc {
            for jj in 0..width {
                dst[kk * width + jj] = if jj < w {
                    // SAFETY: inside x.
                    unsafe { x.at(r0 + kk, c0 + jj) }
                } else {
                    0.0
                };
            }
        }
    }
}

/// The most bytes a block of B's rows read in place may span when the product has more than
/// half [`DIRECT_B_K`] rows: beyond, every step's row is a page of its own, and packing
/// pays (256 → 128 pointwise at 56², rows 12.5 KB apart: 2.05 → 1.91 ms packed; at 14²,
/// 1024 → 128 spanning 800 KB per block, in place stays faster, as does 256 → 64 at 56²).
const DIRECT_B_SPAN: usize = 1 << 20;

/// Products with at most this many rows and steps read a row-major B's whole panels in place
/// (see `columns`).
const DIRECT_B_K: usize = 128;

/// Contractions of at most this many steps read B's whole panels in place when the product
/// has at most [`DIRECT_B_K`] rows: a block of KC steps of two panels (32 KiB) stays in L1
/// while the rows' tiles run over it (a 1024 → 128 pointwise conv at 14×14: 0.43 → 0.39 ms;
/// with more rows packing pays: 64 → 256 channels at 56², 1.08 → 1.15 ms read in place).
const DIRECT_B_STEPS: usize = 1024;

/// Multiply-adds from which the few-row and prepacked paths split a product over threads.
const SMALL_PATH_SPLIT: usize = 1 << 22;

fn micro_portable(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..kc {
        let bv = &b[kk * NR..][..NR];
        for (ii, row) in acc.iter_mut().enumerate() {
            let av = a[kk * MR + ii];
            for (x, &y) in row.iter_mut().zip(bv) {
                *x += av * y;
            }
        }
    }
    for (ii, row) in acc.iter().enumerate() {
        tile[ii * NR..][..NR].copy_from_slice(row);
    }
}

/// [`micro_avx2`] in 16-lane registers over `R` panels of A (MR rows each) and `C` panels of B
/// (NR columns each, one register per row), so up to 12×32 outputs per tile: the same fused
/// multiply-adds per output in the same order (identical results), with twice the work per
/// instruction and enough independent accumulators to hide the multiply-add latency. Only the
/// tile's first `rows` rows and `cols` columns reach C (masked at the edges). Step `kk` of B
/// panel `q` is at `b[q] + kk·NR` for [`PACKED`] panels, `b[q] + kk·bs[q]` for [`ROWS`] of a
/// B read in place, and `b[q] + offs[kk]` for [`OFFSETS`] (an implicit im2col: step kk is
/// the tap's shifted run of a padded image).
///
/// # Safety
/// The CPU has AVX-512F; each A panel and B panel holds kc steps (`offs` kc offsets for
/// [`OFFSETS`]); the `rows`×`cols` tile of `out` is inside C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn micro_avx512<const R: usize, const C: usize, const STEP: u8>(
    kc: usize,
    a: [ARows; R],
    b: [*const f32; C],
    bs: [usize; C],
    offs: *const usize,
    out: Out<'_>,
) {
    // SAFETY: forwarded.
    unsafe {
        let acc = accumulate::<R, C, STEP>(kc, a, b, bs, offs, out.rows);
        store_tile::<R, C>(&acc, out);
    }
}

/// The accumulators of [`micro_avx512`]'s tile after `kc` steps (row i's panel q at `2i + q`),
/// of which the first `rows` rows are used (a tile of two A panels and at most 8 rows sums
/// rows 6 and 7 of the second panel only).
///
/// # Safety
/// As [`micro_avx512`]; with at most 8 rows, only rows 6 and 7 of the second A panel need be
/// readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn accumulate<const R: usize, const C: usize, const STEP: u8>(
    kc: usize,
    a: [ARows; R],
    b: [*const f32; C],
    bs: [usize; C],
    offs: *const usize,
    rows: usize,
) -> [std::arch::x86_64::__m512; 2 * MR * 2] {
    use std::arch::x86_64::*;
    // One flat array of accumulators, indexed by constants once the loops unroll (nested
    // arrays of 24 registers were kept in memory as well, a store per multiply-add).
    let mut acc = [_mm512_setzero_ps(); 2 * MR * 2];
    if let Some((panels, bs)) = asm_tile::<R, C, STEP>(a, bs) {
        if kc > 0 {
            let offs = if STEP == OFFSETS {
                offs
            } else {
                std::ptr::null()
            };
            let b = [b[0], b[C - 1]];
            // SAFETY: as this function's contract; R and C are 2.
            unsafe {
                if rows <= MR + 2 {
                    tile::k_loop8(kc, panels, b, bs, offs, &mut acc)
                } else {
                    tile::k_loop(kc, panels, b, bs, offs, &mut acc)
                }
            };
        }
    } else {
        // SAFETY: as this function's contract.
        unsafe { k_loop::<R, C, STEP>(kc, a, b, bs, offs, &mut acc) };
    }
    acc
}

/// A full tile whose A panels advance alike and whose B steps are offsets or one stride, as
/// the k loop in assembly (`tile.rs`) takes it: its A rows and B's step stride.
#[cfg(target_arch = "x86_64")]
pub(super) fn asm_tile<const R: usize, const C: usize, const STEP: u8>(
    a: [ARows; R],
    bs: [usize; C],
) -> Option<(tile::TileRows, usize)> {
    let (a0, a1) = (a[0], a[R - 1]);
    let bstride = match STEP {
        PACKED => Some(NR),
        ROWS => (bs[0] == bs[C - 1]).then_some(bs[0]),
        _ => Some(0),
    }?;
    let panels = tile::TileRows {
        a: [a0.p, a1.p],
        row: a0.row,
        step: a0.step,
    };
    (R == 2 && C == 2 && a0.row == a1.row && a0.step == a1.step).then_some((panels, bstride))
}

/// [`micro_avx512`]'s k loop in Rust, for the tiles `tile::k_loop` does not take.
///
/// # Safety
/// As [`micro_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn k_loop<const R: usize, const C: usize, const STEP: u8>(
    kc: usize,
    a: [ARows; R],
    b: [*const f32; C],
    bs: [usize; C],
    offs: *const usize,
    acc: &mut [std::arch::x86_64::__m512; 2 * MR * 2],
) {
    use std::arch::x86_64::*;
    for kk in 0..kc {
        // SAFETY: the A rows hold kc steps; each B panel kc steps of NR values, `bs` apart.
        unsafe {
            let mut bv = [_mm512_setzero_ps(); 2];
            for q in 0..C {
                let at = match STEP {
                    PACKED => kk * NR,
                    ROWS => kk * bs[q],
                    _ => *offs.add(kk),
                };
                bv[q] = _mm512_loadu_ps(b[q].add(at));
            }
            for r in 0..R {
                let ar = a[r];
                for ii in 0..MR {
                    let av = _mm512_set1_ps(*ar.p.add(ii * ar.row + kk * ar.step));
                    for q in 0..C {
                        let x = &mut acc[(r * MR + ii) * 2 + q];
                        *x = _mm512_fmadd_ps(av, bv[q], *x);
                    }
                }
            }
        }
    }
}

/// Stores [`micro_avx512`]'s accumulators (row i's panel q at `2i + q`) through `out`.
///
/// # Safety
/// As [`micro_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile<const R: usize, const C: usize>(
    acc: &[std::arch::x86_64::__m512; 2 * MR * 2],
    out: Out<'_>,
) {
    use std::arch::x86_64::*;
    if let Some(((e, t), Some(clamp))) = out.epi.map(|(e, t)| ((e, t), e.quick())) {
        // SAFETY: forwarded.
        return unsafe {
            match (clamp, e.res.is_null()) {
                (false, true) => store_quick::<R, C, false, false>(acc, &out, (e, t)),
                (false, false) => store_quick::<R, C, false, true>(acc, &out, (e, t)),
                (true, true) => store_quick::<R, C, true, false>(acc, &out, (e, t)),
                (true, false) => store_quick::<R, C, true, true>(acc, &out, (e, t)),
            }
        };
    }
    let Out {
        p,
        ld,
        add,
        rows,
        cols,
        epi,
        panel,
    } = out;
    for i in 0..(R * MR).min(rows) {
        for q in 0..C {
            let mut v = acc[i * 2 + q];
            let n = cols.saturating_sub(q * panel).min(panel);
            if n == 0 {
                break;
            }
            // SAFETY: the mask selects the `n` columns inside the destination row (and the
            // residual's, laid out alike).
            unsafe {
                let at = i * ld + q * panel;
                let d = p.add(at);
                // The tile's row i and columns q·NR.. are inside the epilogue's operands.
                if n == NR {
                    if add {
                        v = _mm512_add_ps(v, _mm512_loadu_ps(d));
                    }
                    if let Some((e, (r0, c0, a0))) = epi {
                        let st = epilogue::avx512::coefs(e, r0 + i, c0 + q * panel, !0);
                        v = epilogue::avx512::apply(e, v, st, e.res.wrapping_add(a0 + at), !0);
                    }
                    _mm512_storeu_ps(d, v);
                } else {
                    let m: __mmask16 = (1u16 << n) - 1;
                    if add {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, d));
                    }
                    if let Some((e, (r0, c0, a0))) = epi {
                        let st = epilogue::avx512::coefs(e, r0 + i, c0 + q * panel, m);
                        v = epilogue::avx512::apply(e, v, st, e.res.wrapping_add(a0 + at), m);
                    }
                    _mm512_mask_storeu_ps(d, m, v);
                }
            }
        }
    }
}

/// [`store_tile`] through an epilogue [`Epilogue::quick`] takes (`CLAMP` its answer, `RES`
/// whether it has a residual): the same bits, its decisions taken once a tile and its
/// coefficients once a row (per-row operands) or once a panel (per-column ones).
///
/// # Safety
/// As [`store_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_quick<const R: usize, const C: usize, const CLAMP: bool, const RES: bool>(
    acc: &[std::arch::x86_64::__m512; 2 * MR * 2],
    out: &Out<'_>,
    (e, (r0, c0, a0)): (&Epilogue, Tile),
) {
    use epilogue::avx512::{coefs, quick_bounds, quick_coefs, quick_one};
    use std::arch::x86_64::*;
    let &Out {
        p,
        ld,
        add,
        rows,
        cols,
        panel,
        ..
    } = out;
    let mask = |q: usize| -> __mmask16 {
        let n = cols.saturating_sub(q * panel).min(panel);
        if n >= 16 {
            !0
        } else {
            (1u16 << n) - 1
        }
    };
    // SAFETY: the CPU has AVX-512F.
    let (bounds, none) = (unsafe { quick_bounds(e) }, (None, None, None));
    // Per-column coefficients, a panel's lanes (unused for per-row ones).
    // SAFETY: the tile's columns (the lanes in the mask) are inside the operands.
    let per_col: [(__m512, __m512); C] = std::array::from_fn(|q| unsafe {
        quick_coefs(match e.cols && mask(q) != 0 {
            true => coefs(e, r0, c0 + q * panel, mask(q)),
            false => none,
        })
    });
    for i in 0..(R * MR).min(rows) {
        // SAFETY: row i is inside the per-row operands.
        let per_row = unsafe {
            quick_coefs(match e.cols {
                true => none,
                false => coefs(e, r0 + i, c0, !0),
            })
        };
        for (q, &st) in per_col.iter().enumerate() {
            let m = mask(q);
            if m == 0 {
                break;
            }
            let st = if e.cols { st } else { per_row };
            // SAFETY: the mask selects the columns inside the destination row (and the
            // residual's, laid out alike).
            unsafe {
                let at = i * ld + q * panel;
                let d = p.add(at);
                let mut v = acc[i * 2 + q];
                if add {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, d));
                }
                let r = e.res.wrapping_add(a0 + at);
                let v = quick_one::<CLAMP, RES>(v, st, bounds, r, m);
                _mm512_mask_storeu_ps(d, m, v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn micro_avx512<const R: usize, const C: usize, const STEP: u8>(
    _: usize,
    _: [ARows; R],
    _: [*const f32; C],
    _: [usize; C],
    _: *const usize,
    _: Out<'_>,
) {
    unreachable!("only called when the CPU has AVX-512")
}

/// How [`micro_avx512`] finds B's steps: packed panels, NR apart.
pub(super) const PACKED: u8 = 0;
/// Rows of a B read in place, `bs[q]` apart.
pub(super) const ROWS: u8 = 1;
/// Each step at its own offset (`offs[kk]`) from the panel's start.
pub(super) const OFFSETS: u8 = 2;

/// The micro-kernel's MR rows of A: element (ii, kk) at `p[ii * row + kk * step]` — a packed
/// panel (`row` 1, `step` MR) or rows of a row-major A read in place (`row` its row stride,
/// `step` 1).
#[derive(Clone, Copy)]
pub(super) struct ARows {
    pub(super) p: *const f32,
    pub(super) row: usize,
    pub(super) step: usize,
}

impl ARows {
    pub(super) fn packed(p: &[f32]) -> ARows {
        ARows {
            p: p.as_ptr(),
            row: 1,
            step: MR,
        }
    }
}

/// Where the micro-kernel puts its MR×NR result: the first `rows` rows and `cols` columns,
/// rows `ld` apart from `p`, overwritten or (`add`) accumulated into, then stored through
/// `epi` (from the tile's first row and element) when given. The AVX-512 kernel's B panel
/// `q` holds columns `q·panel..` (at most `panel` of them; NR for products, a row of a
/// narrow image for [`OFFSETS`] tiles of two output rows).
pub(super) struct Out<'a> {
    pub(super) p: *mut f32,
    pub(super) ld: usize,
    pub(super) add: bool,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// The epilogue and the tile's first row, column and element in its terms (not a copy
    /// shifted there: loads from a copy written just before stall on its stores).
    pub(super) epi: Option<(&'a Epilogue, Tile)>,
    pub(super) panel: usize,
}

/// A tile's first row, column and element of the output.
pub(super) type Tile = (usize, usize, usize);

#[cfg(test)]
mod tests {
    use super::epilogue::{Act, Quant};
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, bt: bool) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    let bv = if bt { b[j * k + kk] } else { b[kk * n + j] };
                    s += a[i * k + kk] as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    /// Values in [-0.5, 0.5) from a seed.
    fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        }
    }

    /// `c = a·b` for row-major `a` (m×k), `b` (k×n) and `c` (m×n), no epilogue.
    fn row_major(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        let d = |x: usize| x as i64;
        // SAFETY: the operands hold what these sizes read and write (asserted).
        unsafe {
            product(
                a.as_ptr(),
                b.as_ptr(),
                std::ptr::null(),
                c.as_mut_ptr(),
                d(k),
                1,
                d(n),
                1,
                d(n),
                d(m),
                d(n),
                d(k),
                &Epilogue::NONE,
            )
        }
    }

    /// A row-major A read in place ends right before an inaccessible page (as an artifact's
    /// weights may end its mapping): tiles of 8 rows read no row past the last, whatever the
    /// columns (one B panel, or a pair).
    #[cfg(unix)]
    #[test]
    fn direct_tiles_read_no_row_past_a() {
        let page = 4096usize;
        for &(m, n, k) in &[
            (8usize, 16usize, 64usize),
            (20, 16, 64),
            (20, 40, 48),
            (8, 100, 32),
            (32, 70, 16),
        ] {
            let len = m * k;
            let bytes = (len * 4).div_ceil(page) * page;
            // SAFETY: a fresh anonymous mapping with a page after it made inaccessible.
            let base = unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    bytes + page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                assert_eq!(
                    libc::mprotect(p.cast::<u8>().add(bytes).cast(), page, libc::PROT_NONE),
                    0
                );
                p.cast::<u8>()
            };
            // SAFETY: A's elements end where the inaccessible page starts.
            let a = unsafe {
                std::slice::from_raw_parts_mut(base.add(bytes - len * 4).cast::<f32>(), len)
            };
            let mut rnd = uniform(5);
            a.iter_mut().for_each(|x| *x = rnd());
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let want = naive(a, &b, m, n, k, false);
            let mut c = vec![0f32; m * n];
            row_major(a, &b, &mut c, m, n, k);
            for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4, "{m}x{n}x{k} at {i}: {g} vs {w}");
            }
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(base.cast(), bytes + page) };
        }
    }

    /// The cost model, not a timer: products under 2M multiply-adds stay on the calling
    /// thread (an LSTM's 128×128×64 input projection ran slower split over two threads),
    /// larger ones go to the helpers.
    #[test]
    fn only_large_products_use_helpers() {
        let pool = std::sync::Arc::new(crate::threads::Pool::new(1).unwrap());
        for &(m, n, k, split) in &[
            (128, 128, 64, false),
            (16, 256, 128, false),
            (256, 256, 64, true),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let regions = crate::threads::REGIONS.with(|r| r.get());
            crate::threads::with_helpers(Some(pool.clone()), || row_major(&a, &b, &mut c, m, n, k));
            let used = crate::threads::REGIONS.with(|r| r.get()) > regions;
            assert_eq!(used, split, "{m}x{n}x{k}");
            assert!(c.iter().all(|&x| x == 0.125 * k as f32));
        }
    }

    #[test]
    fn products_match_the_naive_sum_on_awkward_shapes() {
        let mut rnd = uniform(1);
        for &(m, n, k) in &[
            (1, 1, 1),
            (4, 8, 100),
            (2, 300, 200),
            (1, 64, 1000),
            (7, 17, 5),
            (6, 16, 256),
            (13, 33, 300),
            (100, 70, 513),
            (128, 128, 128),
            (3, 200, 1),
            (256, 512, 256),
            (600, 20, 400),
            (3, 37, 150),
            (4, 50, 90),
            (4, 100, 300),
            // Few columns (the narrow path): tails of the 16 lanes, row blocks of 1-4, and
            // one large enough to split its rows over the helpers.
            (5, 1, 37),
            (9, 3, 16),
            (130, 4, 387),
            (7, 2, 1000),
            (1100, 4, 1024),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            for (bt, packed, t) in (0..16).map(|i| (i % 2 == 1, i % 4 >= 2, 1 + i / 4)) {
                let pool =
                    (t > 1).then(|| std::sync::Arc::new(crate::threads::Pool::new(t - 1).unwrap()));
                // Rows of C apart by more than n in some cases (the rest must stay untouched).
                let ldc = n + t - 1;
                // At two threads, every part of the epilogue, per row; at three, per column
                // with a sigmoid; at four, per column without.
                let scale: Vec<f32> = (0..m.max(n)).map(|_| 1.0 + rnd()).collect();
                let shift: Vec<f32> = (0..m.max(n)).map(|_| rnd()).collect();
                let res: Vec<f32> = (0..m * ldc).map(|_| rnd()).collect();
                let epi = if t >= 2 {
                    Epilogue {
                        scale: scale.as_ptr(),
                        shift: shift.as_ptr(),
                        res: res.as_ptr(),
                        scale2: std::ptr::null(),
                        lo: -0.3,
                        hi: 0.2,
                        cols: t >= 3,
                        act: if t == 3 { Act::Sigmoid } else { Act::Identity },
                        pre: None,
                        pre_after_scale: false,
                        shift_first: false,
                        post: None,
                    }
                } else {
                    Epilogue::NONE
                };
                let mut c = vec![f32::NAN; m * ldc];
                let (rs, cs) = if bt { (1, k as i64) } else { (n as i64, 1) };
                let bp = if packed {
                    let p = pack_b(&b, rs, cs, k, n).expect("inside b");
                    assert_eq!(p.len(), packed_len(k, n));
                    p
                } else {
                    Vec::new()
                };
                // SAFETY: the strides stay inside the vectors; bp is B packed. With B packed,
                // the original is never read (artifacts may leave it out): it is null here.
                crate::threads::with_helpers(pool, || unsafe {
                    let (b_ptr, bp_ptr) = if packed {
                        (std::ptr::null(), bp.as_ptr())
                    } else {
                        (b.as_ptr(), std::ptr::null())
                    };
                    kiln_sgemm_packed(
                        a.as_ptr(),
                        b_ptr,
                        bp_ptr,
                        c.as_mut_ptr(),
                        epi.scale,
                        epi.shift,
                        epi.res,
                        epi.scale2,
                        k as i64,
                        1,
                        rs,
                        cs,
                        ldc as i64,
                        m as i64,
                        n as i64,
                        k as i64,
                        i64::from(epi.cols),
                        epi.act as i64,
                        epi.lo,
                        epi.hi,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                        0.0,
                    )
                });
                let mut want = naive(&a, &b, m, n, k, bt);
                if t >= 2 {
                    for i in 0..m {
                        for j in 0..n {
                            let y = &mut want[i * n + j];
                            let c = if t >= 3 { j } else { i };
                            *y = ((*y * scale[c]) + shift[c]) + res[i * ldc + j];
                            *y = y.clamp(-0.3, 0.2);
                            if t == 3 {
                                *y = 1.0 / (1.0 + (-*y).exp());
                            }
                        }
                    }
                }
                for (r, row) in c.chunks(ldc).enumerate() {
                    assert!(row[n..].iter().all(|x| x.is_nan()), "past the row {r}");
                }
                let c: Vec<f32> = c.chunks(ldc).flat_map(|r| r[..n].to_vec()).collect();
                for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()) * (k as f32).sqrt(),
                        "{m}x{n}x{k} bt={bt} packed={packed} threads={t}: element {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_avx512_and_avx2_micro_kernels_agree_bit_for_bit() {
        if !crate::avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rnd = uniform(5);
        // Edges in every direction: rows past one or two A panels, columns past one or two
        // B panels (or a group of them, for few rows against a packed B), k past one block.
        for &(m, n, k) in &[
            (13, 33, 300),
            (12, 32, 256),
            (7, 17, 600),
            (64, 64, 576),
            (25, 50, 9),
            (1, 300, 700),
            (2, 130, 40),
            (3, 17, 300),
            (4, 200, 257),
            (5, 40, 33),
            (130, 4, 387),
            (7, 1, 21),
            (66, 3, 48),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let bp = pack_b(&b, n as i64, 1, k, n).expect("inside b");
            // With an epilogue of every part (its vector code compared too): per row, or
            // per column, with a tanh for even k.
            let scale: Vec<f32> = (0..m.max(n)).map(|_| 1.0 + rnd()).collect();
            let shift: Vec<f32> = (0..m.max(n)).map(|_| rnd()).collect();
            let res: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let by_col = m % 2 == 1;
            // A second scale where the pair comes after the scale.
            let after = k % 6 == 0;
            let epi = Epilogue {
                scale: scale.as_ptr(),
                shift: shift.as_ptr(),
                res: res.as_ptr(),
                scale2: if after {
                    shift.as_ptr()
                } else {
                    std::ptr::null()
                },
                lo: -0.3,
                hi: 0.2,
                cols: by_col,
                act: if by_col && k % 2 == 0 {
                    Act::Tanh
                } else {
                    Act::Identity
                },
                // QDQ pairs before and after for some shapes (u8, then i8).
                pre: Quant::of([0.031, 7.0, 0.0, 255.0, 0.031]).filter(|_| k % 3 == 0),
                pre_after_scale: k % 2 == 0,
                shift_first: k % 4 == 1,
                post: Quant::of([0.0027, -3.0, -128.0, 127.0, 1.0]).filter(|_| n % 2 == 1),
            };
            let q = epi.quant_scalars();
            let run = |narrow: bool, packed: bool| {
                AVX2_ONLY.with(|c| c.set(narrow));
                let mut c = vec![f32::NAN; m * n];
                let bp = if packed {
                    bp.as_ptr()
                } else {
                    std::ptr::null()
                };
                // SAFETY: the operands hold m×k, k×n and m×n elements; bp is b packed.
                unsafe {
                    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                    let e = &epi;
                    let (cols, act) = (i64::from(e.cols), e.act as i64);
                    kiln_sgemm_packed(
                        a, b, bp, c, e.scale, e.shift, e.res, e.scale2, k as i64, 1, n as i64, 1,
                        n as i64, m as i64, n as i64, k as i64, cols, act, e.lo, e.hi, q[0], q[1],
                        q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10],
                    )
                };
                AVX2_ONLY.with(|c| c.set(false));
                c
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for packed in [false, true] {
                let (wide, narrow) = (run(false, packed), run(true, packed));
                assert_eq!(bits(&wide), bits(&narrow), "{m}x{n}x{k} packed={packed}");
            }
        }
    }

    #[test]
    fn packing_refuses_operands_too_small() {
        let b = vec![0f32; 10];
        assert!(pack_b(&b, 5, 1, 2, 5).is_some());
        assert!(pack_b(&b, 5, 1, 3, 5).is_none());
        assert!(pack_b(&b, -5, 1, 2, 5).is_none());
        assert_eq!(pack_b(&b, 5, 1, 0, 5), Some(Vec::new()));
    }

    #[test]
    fn an_empty_contraction_gives_zeros() {
        let mut c = vec![f32::NAN; 6];
        // SAFETY: no operand element is read; c holds 6 elements.
        unsafe {
            sgemm(
                std::ptr::null(),
                0,
                1,
                std::ptr::null(),
                1,
                1,
                c.as_mut_ptr(),
                2,
                3,
                0,
            )
        };
        assert_eq!(c, vec![0.0; 6]);
    }
}
