//! The library routines on one core, against the core's measured peak: `cargo bench --bench
//! routines`. Throughput is in floating-point operations (a multiply-add is two), so
//! criterion's `elem/s` reads as FLOP/s; `peak/fma` is the core's own limit — independent
//! fused multiply-adds in the widest registers it has — to compare them with.
//! Shapes: products of 1, 4, 32 and 256 rows by 512×512 (B packed ahead of time, as weights
//! are); ResNet's 64→64 3×3 conv at 56×56 (direct, and by Winograd's F(2×2, 3×3), counted in
//! the direct sum's operations: effective FLOP/s) and MobileNet's pointwise 64→128 and
//! depthwise 3×3 at 56×56 and 112×112 (stride 2); a 100-tree forest of depth 8 over 256 rows
//! (throughput in node steps); an LSTM layer of 128 units over 32 steps of 4 rows (the
//! recurrence alone, weights packed; its products' FLOP/s, the cell's work on top); a
//! 4096×4096 matrix-vector product with a 4-bit weight in blocks of 32 (`qgemm4` reading the
//! nibbles) beside the same product on the f32 weight packed ahead of time (`int4_matvec`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::kernel::routines::gemm::nbits;
use kiln::kernel::routines::{conv, gemm, rnn, trees};
use std::hint::black_box;

/// Values in [-0.5, 0.5).
fn values(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// `iters` rounds of 24 independent multiply-adds in 16-lane registers: 768 FLOPs a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: usize, x: f32) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(x), _mm512_set1_ps(0.999));
    let mut acc = [_mm512_set1_ps(1.0); 24];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, b, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// [`fma512`] in 8-lane registers: 384 FLOPs a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: usize, x: f32) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(x), _mm256_set1_ps(0.999));
    let mut acc = [_mm256_set1_ps(1.0); 24];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, b, a);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("peak");
    let iters = 100_000;
    #[cfg(target_arch = "x86_64")]
    if kiln::kernel::avx512() {
        group.throughput(Throughput::Elements(768 * iters as u64));
        // SAFETY: the CPU has AVX-512.
        group.bench_function("fma", |b| {
            b.iter(|| unsafe { fma512(black_box(iters), black_box(1e-3)) })
        });
    } else if kiln::kernel::avx2_fma() {
        group.throughput(Throughput::Elements(384 * iters as u64));
        // SAFETY: the CPU has AVX2 and FMA.
        group.bench_function("fma", |b| {
            b.iter(|| unsafe { fma256(black_box(iters), black_box(1e-3)) })
        });
    }
    group.finish();
}

fn products(c: &mut Criterion) {
    let (k, n) = (512, 512);
    let b = values(k * n, 2);
    let bp = gemm::pack_b(&b, n as i64, 1, k, n).expect("inside b");
    let mut group = c.benchmark_group("gemm");
    for m in [1usize, 4, 32, 256] {
        let a = values(m * k, 1);
        let mut out = vec![0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("rows_by_512x512", m), &m, |bench, &m| {
            bench.iter(|| {
                // SAFETY: A is m×k, B packed for k×n, C m×n; no epilogue.
                unsafe {
                    let null = std::ptr::null();
                    gemm::kiln_sgemm_packed(
                        a.as_ptr(),
                        null,
                        bp.as_ptr(),
                        out.as_mut_ptr(),
                        null,
                        null,
                        null,
                        null,
                        k as i64,
                        1,
                        n as i64,
                        1,
                        n as i64,
                        m as i64,
                        n as i64,
                        k as i64,
                        0,
                        0,
                        f32::NEG_INFINITY,
                        f32::INFINITY,
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
                }
            })
        });
    }
    group.finish();
}

/// (name, input channels, output channels, image side, window, stride, depthwise).
const CONVS: [(&str, i64, i64, i64, i64, i64, bool); 4] = [
    ("resnet_3x3_64_56", 64, 64, 56, 3, 1, false),
    ("mobilenet_1x1_64to128_56", 64, 128, 56, 1, 1, false),
    ("mobilenet_dw3x3_64_56", 64, 64, 56, 3, 1, true),
    ("mobilenet_dw3x3s2_32_112", 32, 32, 112, 3, 2, true),
];

fn convolutions(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(20);
    for (name, ci, co, side, win, stride, depthwise) in CONVS {
        let pad = win / 2;
        let os = (side + 2 * pad - win) / stride + 1;
        let x = values((ci * side * side) as usize, 3);
        let taps = if depthwise { win * win } else { ci * win * win };
        let w = values((co * taps) as usize, 4);
        let mut out = vec![0f32; (co * os * os) as usize];
        group.throughput(Throughput::Elements((2 * co * os * os * taps) as u64));
        let null = std::ptr::null();
        let (ninf, inf) = (f32::NEG_INFINITY, f32::INFINITY);
        // The same blocks of rows as lowering makes them (about 1024 columns, at least four
        // blocks: `block_rows` in codegen/src/lower/conv.rs).
        let least = ((32 + os - 1) / os).min((os + 1) / 2);
        let rows = (1024 / os).max(1).min(((os + 3) / 4).max(least)).max(1);
        // A dense conv's blocks, by Winograd from the filters' transforms `u`, or (null) as
        // `conv2d_rows` computes them.
        let dense = |u: *const f32, out: &mut [f32]| {
            let mut y0 = 0;
            while y0 < os {
                let n = rows.min(os - y0);
                // SAFETY: the image, filters, transforms and result hold what the geometry
                // needs.
                unsafe {
                    conv::kiln_conv2d_wino(
                        x.as_ptr(),
                        w.as_ptr(),
                        u,
                        out.as_mut_ptr(),
                        null,
                        null,
                        null,
                        null,
                        ci,
                        co,
                        side,
                        side,
                        os,
                        os,
                        win,
                        win,
                        stride,
                        stride,
                        1,
                        1,
                        pad,
                        pad,
                        y0,
                        n,
                        0,
                        ninf,
                        inf,
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
                };
                y0 += n;
            }
        };
        let g = conv::Geometry::of([side, side, os, os, win, win, stride, stride, 1, 1, pad, pad]);
        if !depthwise && conv::winograd::applies(&g, ci, co) {
            let u = conv::winograd::transform_filters(&w, co as usize, ci as usize);
            group.bench_function(format!("{name}_winograd"), |bench| {
                bench.iter(|| dense(u.as_ptr(), &mut out))
            });
        }
        // The blocked layout's routine (what the default pipeline runs): the image as
        // blocks of 16 channels (any values: the sums take the same time), the filters
        // packed, every output block and row in one call.
        let packed = if depthwise {
            conv::blocked::pack_depthwise(&w, co as usize, (win as usize, win as usize))
        } else {
            conv::blocked::pack_filters(
                &w,
                co as usize,
                ci as usize,
                (win as usize, win as usize),
                16,
            )
        }
        .expect("blocks of 16");
        // 64-byte aligned, as kernels' constants and arenas are.
        let mut lines = vec![0f32; packed.len() + 16];
        let at = lines.as_ptr().align_offset(64);
        lines[at..at + packed.len()].copy_from_slice(&packed);
        let mut aligned_out = vec![0f32; out.len() + 16];
        let oat = aligned_out.as_ptr().align_offset(64);
        group.bench_function(format!("{name}_nchwc"), |bench| {
            bench.iter(|| {
                // SAFETY: the blocked image has the plain one's elements; the packed filters
                // and the result hold what the geometry needs.
                unsafe {
                    conv::kiln_conv2d_nchwc(
                        x.as_ptr(),
                        w.as_ptr(),
                        lines[at..].as_ptr(),
                        aligned_out[oat..].as_mut_ptr(),
                        null,
                        null,
                        null,
                        null,
                        ci,
                        co,
                        side,
                        side,
                        os,
                        os,
                        win,
                        win,
                        stride,
                        stride,
                        1,
                        1,
                        pad,
                        pad,
                        16,
                        if depthwise { ci } else { 1 },
                        0,
                        co / 16,
                        0,
                        os,
                        0,
                        ninf,
                        inf,
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
                }
            })
        });
        group.bench_function(name, |bench| {
            bench.iter(|| {
                if depthwise {
                    for ch in 0..co {
                        // SAFETY: each plane is inside x, w and out.
                        unsafe {
                            let (xp, wp) = (
                                x.as_ptr().add((ch * side * side) as usize),
                                w.as_ptr().add((ch * taps) as usize),
                            );
                            let op = out.as_mut_ptr().add((ch * os * os) as usize);
                            conv::kiln_conv2d_plane(
                                xp, wp, op, null, null, null, null, side, side, os, os, win, win,
                                stride, stride, 1, 1, pad, pad, 0, ninf, inf, 0.0, 0.0, 0.0, 0.0,
                                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                            )
                        }
                    }
                } else {
                    dense(null, &mut out);
                }
            })
        });
    }
    group.finish();
}

fn forest(c: &mut Criterion) {
    // 100 complete trees of depth 8 (255 inner nodes, 256 leaves each) over 20 features.
    let (trees_n, depth, features, rows) = (100usize, 8u32, 20usize, 256usize);
    let per = (1usize << (depth + 1)) - 1;
    let mut seed = 5u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let (mut f, mut th, mut rule, mut yes, mut no, mut nan, mut roots) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for t in 0..trees_n {
        let base = (t * per) as i64;
        roots.push(base);
        for i in 0..per as i64 {
            let inner = i < (1 << depth) - 1;
            f.push((next() % features) as i64);
            th.push((next() % 1000) as f32 / 1000.0 - 0.5);
            rule.push(if inner { 0 } else { trees::LEAF });
            yes.push(if inner { base + 2 * i + 1 } else { base + i });
            no.push(if inner { base + 2 * i + 2 } else { base + i });
            nan.push(0u8);
        }
    }
    let x = values(rows * features, 6);
    let mut out = vec![0i64; rows * trees_n];
    let mut group = c.benchmark_group("tree_walk");
    group.throughput(Throughput::Elements(
        (rows * trees_n * depth as usize) as u64,
    ));
    group.bench_function("100_trees_depth_8_256_rows", |bench| {
        bench.iter(|| {
            // SAFETY: every table holds `nodes` entries, x rows·features, out rows·trees.
            unsafe {
                trees::kiln_tree_walk(
                    x.as_ptr(),
                    f.as_ptr(),
                    th.as_ptr(),
                    rule.as_ptr(),
                    yes.as_ptr(),
                    no.as_ptr(),
                    nan.as_ptr(),
                    roots.as_ptr(),
                    out.as_mut_ptr(),
                    rows as i64,
                    features as i64,
                    trees_n as i64,
                    f.len() as i64,
                )
            }
        })
    });
    group.finish();
}

fn recurrence(c: &mut Criterion) {
    let (seq, batch, hidden) = (32usize, 4usize, 128usize);
    let state = batch * hidden;
    let xw = values(seq * batch * 4 * hidden, 7);
    let rt: Vec<f32> = values(4 * hidden * hidden, 8)
        .iter()
        .map(|w| w * 0.2)
        .collect();
    let packed = rnn::pack(&rt, hidden, &[4]).expect("rt holds hidden·4·hidden values");
    let (h0, c0) = (vec![0f32; state], vec![0f32; state]);
    let (mut y, mut h, mut cn) = (
        vec![0f32; seq * state],
        vec![0f32; state],
        vec![0f32; state],
    );
    let mut group = c.benchmark_group("lstm");
    group.throughput(Throughput::Elements((2 * seq * state * 4 * hidden) as u64));
    group.bench_function("32_steps_4_rows_128_units", |bench| {
        bench.iter(|| {
            // SAFETY: every operand holds what `kiln_lstm` reads and writes.
            unsafe {
                rnn::kiln_lstm(
                    xw.as_ptr(),
                    rt.as_ptr(),
                    packed.as_ptr(),
                    h0.as_ptr(),
                    c0.as_ptr(),
                    y.as_mut_ptr(),
                    h.as_mut_ptr(),
                    cn.as_mut_ptr(),
                    seq as i64,
                    batch as i64,
                    hidden as i64,
                    0,
                )
            }
        })
    });
    group.finish();
}

/// One row by a 4096×4096 weight: 4-bit in blocks of 32 against f32 (packed ahead of time).
fn four_bit(c: &mut Criterion) {
    let (n, k, block) = (4096usize, 4096usize, 32usize);
    let blocks = k / block;
    let w: Vec<u8> = values(n * k / 2, 5)
        .iter()
        .map(|v| ((v + 0.5) * 256.0) as u8)
        .collect();
    let scale: Vec<f32> = values(n * blocks, 6)
        .iter()
        .map(|v| 0.01 + v.abs() / 50.0)
        .collect();
    let zero: Vec<f32> = values(n * blocks, 7)
        .iter()
        .map(|v| ((v + 0.5) * 16.0).floor())
        .collect();
    let bp = nbits::dequantized_b(&w, &scale, &zero, n, k, block).expect("sizes fit");
    let a = values(k, 8);
    let mut out = vec![0f32; n];
    let null = std::ptr::null();
    let (ninf, inf) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut group = c.benchmark_group("int4_matvec");
    group.throughput(Throughput::Elements((2 * n * k) as u64));
    group.bench_function("f32_packed_4096x4096", |bench| {
        bench.iter(|| {
            // SAFETY: A is 1×k, B packed for k×n, C 1×n; no epilogue.
            unsafe {
                gemm::kiln_sgemm_packed(
                    a.as_ptr(),
                    null,
                    bp.as_ptr(),
                    out.as_mut_ptr(),
                    null,
                    null,
                    null,
                    null,
                    k as i64,
                    1,
                    n as i64,
                    1,
                    n as i64,
                    1,
                    n as i64,
                    k as i64,
                    0,
                    0,
                    ninf,
                    inf,
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
            }
        })
    });
    // One row by the packed weight, its rows quantized to int8 first when `xq` is 1.
    let mut qgemm4 = |xq: i64| {
        // SAFETY: A is 1×k; the weight, scales and zero points hold n rows; C 1×n.
        unsafe {
            nbits::kiln_qgemm4(
                a.as_ptr(),
                w.as_ptr(),
                scale.as_ptr(),
                zero.as_ptr(),
                null,
                out.as_mut_ptr(),
                null,
                null,
                null,
                null,
                k as i64,
                n as i64,
                1,
                n as i64,
                k as i64,
                block as i64,
                0,
                0,
                xq,
                ninf,
                inf,
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
        }
    };
    group.bench_function("int4_block32_4096x4096", |bench| bench.iter(|| qgemm4(0)));
    group.bench_function("int4_block32_int8_rows_4096x4096", |bench| {
        bench.iter(|| qgemm4(1))
    });
    group.finish();
}

criterion_group!(
    benches,
    peak,
    products,
    convolutions,
    forest,
    recurrence,
    four_bit
);
criterion_main!(benches);
