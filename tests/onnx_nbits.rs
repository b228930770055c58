//! com.microsoft MatMulNBits of every bit width onnxruntime takes (2, 4, 8): weights packed
//! low bits first, blocks with a padded last one, zero points packed or left to their default
//! 2^(bits−1), a bias — each run as imported against the definition computed here.

mod common;

use common::onnx::{floats, importing_ms, int_attr, ints_attr, model, node, raw, runs, vi};
use kiln::frontends::onnx::proto::*;
use kiln::{Model, Tensor};

/// `values` of `bits` bits packed low bits first, `per` a byte, rows of `len` values each
/// padded to whole bytes.
fn pack(values: &[u8], bits: usize, len: usize) -> Vec<u8> {
    let per = 8 / bits;
    values
        .chunks(len)
        .flat_map(|row| {
            row.chunks(per).map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |b, (i, &v)| b | v << (i * bits))
            })
        })
        .collect()
}

/// A com.microsoft MatMulNBits node `mm` reading `inputs` into `y`, with K, N, bits and
/// block_size (and an accuracy_level when given).
fn matmul_nbits(inputs: &[&str], [k, n, bits, block]: [i64; 4], level: Option<i64>) -> NodeProto {
    let mut attrs = vec![
        int_attr("K", k),
        int_attr("N", n),
        int_attr("bits", bits),
        int_attr("block_size", block),
    ];
    attrs.extend(level.map(|l| int_attr("accuracy_level", l)));
    let mut mm = node("MatMulNBits", "mm", inputs, &["y"], attrs);
    mm.domain = "com.microsoft".into();
    mm
}

/// Pseudo-random draws below their argument, from `seed`.
fn draws(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |m| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    }
}

#[test]
fn every_bit_width_is_its_definition() {
    let (k, n, block, rows) = (40usize, 3usize, 16usize, 2usize);
    let nb = k.div_ceil(block);
    let mut next = draws(11);
    let x: Vec<f32> = (0..rows * k)
        .map(|_| next(17) as f32 * 0.25 - 2.0)
        .collect();
    let scales: Vec<f32> = (0..n * nb).map(|_| 0.125 * (1 + next(6)) as f32).collect();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 - 1.0).collect();
    for bits in [2usize, 4, 8] {
        for zero_points in [true, false] {
            let top = 1u64 << bits;
            // The last block's padding (values past K) is random too: never read.
            let q: Vec<u8> = (0..n * nb * block).map(|_| next(top) as u8).collect();
            let z: Vec<u8> = (0..n * nb).map(|_| next(top) as u8).collect();
            let zero = |j: usize, b: usize| match zero_points {
                true => f32::from(z[j * nb + b]),
                false => (1 << (bits - 1)) as f32,
            };
            let want: Vec<f32> = (0..rows * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    let dot: f32 = (0..k)
                        .map(|l| {
                            let w = (f32::from(q[j * nb * block + l]) - zero(j, l / block))
                                * scales[j * nb + l / block];
                            x[i * k + l] * w
                        })
                        .sum();
                    dot + bias[j]
                })
                .collect();
            let mut inputs = vec!["x", "w", "s", if zero_points { "z" } else { "" }, "", "b"];
            let mut inits = vec![
                raw(
                    "w",
                    data_type::UINT8,
                    &[n as i64, nb as i64, (block * bits / 8) as i64],
                    pack(&q, bits, nb * block),
                ),
                floats("s", &[(n * nb) as i64], &scales),
                floats("b", &[n as i64], &bias),
            ];
            if zero_points {
                let zb = (nb * bits).div_ceil(8);
                inits.push(raw(
                    "z",
                    data_type::UINT8,
                    &[(n * zb) as i64],
                    pack(&z, bits, nb),
                ));
            } else {
                inputs[3] = "";
            }
            let dims = [k, n, bits, block].map(|d| d as i64);
            let mm = matmul_nbits(&inputs, dims, None);
            let bytes = model(
                vec![mm],
                vec![vi("x", data_type::FLOAT, &[rows as i64, k as i64])],
                vec![vi("y", data_type::FLOAT, &[rows as i64, n as i64])],
                inits,
                21,
            );
            let what = format!("{bits} bits, zero points given: {zero_points}");
            let model = Model::from_onnx(
                &importing_ms(&bytes),
                Default::default(),
                Default::default(),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let xt = Tensor::from_vec(vec![rows, k], x.clone()).unwrap();
            let out = model.run(&[("x".into(), xt)]).unwrap();
            let got = out[0].1.as_slice::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{what}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

/// An 8-bit weight too large to dequantize at compile time (past `fold`'s 16 MiB) is
/// dequantized at run time in one kernel, not one kernel per operation each writing the
/// whole f32 weight: values of constants that fold refused cost what they take.
#[test]
fn a_weight_left_unfolded_is_dequantized_in_one_kernel() {
    let (k, n, block) = (2560i64, 2560i64, 32i64);
    let nb = k / block;
    let w: Vec<u8> = (0..n * k).map(|i| (i * 7 % 251) as u8).collect();
    let s: Vec<f32> = (0..n * nb).map(|i| 0.01 + (i % 5) as f32 * 0.001).collect();
    let mm = matmul_nbits(&["x", "w", "s"], [k, n, 8, block], None);
    let bytes = model(
        vec![mm],
        vec![vi("x", data_type::FLOAT, &[1, k])],
        vec![vi("y", data_type::FLOAT, &[1, n])],
        vec![
            raw("w", data_type::UINT8, &[n, nb, block], w),
            floats("s", &[n * nb], &s),
        ],
        21,
    );
    let g = kiln::onnx::import(
        &importing_ms(&bytes),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let o = kiln::optimize(&g, None, &Default::default()).unwrap();
    let steps: Vec<String> = o
        .node_ids()
        .into_iter()
        .map(|id| o.node(id).op().mnemonic().to_string())
        .filter(|op| !matches!(op.as_str(), "param" | "constant"))
        .collect();
    assert!(steps.len() <= 2, "steps {steps:?}");
}

/// The QDQ form of 4-bit weights (opset 21 DequantizeLinear with `block_size` on int4 or
/// uint4, as onnxruntime's quantizer writes it with `quant_format=QDQ`) before a MatMul runs
/// as the packed `qdot4`: uint4 weights with zero points in blocks of 32 along K (a partial
/// last block), and symmetric int4 ones without, laid out `[N, K]` behind a Transpose, with
/// negative scales (onnxruntime's symmetric quantizer writes them) — compiled, at 1 and 2
/// threads, and interpreted, against the definition.
#[test]
fn blocked_int4_dequantize_linear_is_qdot4() {
    // Past 64 KiB as f32, which `fold` would dequantize at compile time (small weights run
    // faster as f32).
    let (k, n, block, rows) = (208usize, 96usize, 32usize, 3usize);
    let nb = k.div_ceil(block);
    let mut next = draws(5);
    let x: Vec<f32> = (0..rows * k)
        .map(|_| next(17) as f32 * 0.25 - 2.0)
        .collect();
    let nibbles = |v: &[u8]| pack(v, 4, v.len());
    for signed in [false, true] {
        // Values as stored (two's complement nibbles when signed) and as numbers.
        let q: Vec<u8> = (0..k * n).map(|_| next(16) as u8).collect();
        let value = |b: u8| {
            if signed {
                ((b ^ 8) as i32 - 8) as f32
            } else {
                b as f32
            }
        };
        let z: Vec<u8> = (0..nb * n).map(|_| next(16) as u8).collect();
        let s: Vec<f32> = (0..nb * n)
            .map(|_| 0.125 * (1 + next(6)) as f32 * if next(2) == 0 { 1.0 } else { -1.0 })
            .collect();
        // Weight (l, j) of K × N: unsigned as [K, N] blocked along axis 0, signed as [N, K]
        // along axis 1.
        let at = |l: usize, j: usize| if signed { j * k + l } else { l * n + j };
        let param = |l: usize, j: usize| {
            if signed {
                j * nb + l / block
            } else {
                (l / block) * n + j
            }
        };
        let want: Vec<f32> = (0..rows * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .map(|l| {
                        let zero = if signed { 0.0 } else { z[param(l, j)] as f32 };
                        let w = (value(q[at(l, j)]) - zero) * s[param(l, j)];
                        f64::from(x[i * k + l]) * f64::from(w)
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        let (dt, wdims, pdims, axis) = if signed {
            (data_type::INT4, [n, k], [n, nb], 1)
        } else {
            (data_type::UINT4, [k, n], [nb, n], 0)
        };
        let (wdims, pdims) = (wdims.map(|d| d as i64), pdims.map(|d| d as i64));
        let mut inits = vec![raw("w", dt, &wdims, nibbles(&q)), floats("s", &pdims, &s)];
        let mut dq_in = vec!["w", "s"];
        if !signed {
            inits.push(raw("z", dt, &pdims, nibbles(&z)));
            dq_in.push("z");
        }
        let attrs = vec![int_attr("axis", axis), int_attr("block_size", block as i64)];
        let mut nodes = vec![node("DequantizeLinear", "dq", &dq_in, &["wf"], attrs)];
        let b = if signed {
            let perm = ints_attr("perm", &[1, 0]);
            nodes.push(node("Transpose", "t", &["wf"], &["wt"], vec![perm]));
            "wt"
        } else {
            "wf"
        };
        nodes.push(node("MatMul", "mm", &["x", b], &["y"], vec![]));
        let bytes = model(
            nodes,
            vec![vi("x", data_type::FLOAT, &[rows as i64, k as i64])],
            vec![vi("y", data_type::FLOAT, &[rows as i64, n as i64])],
            inits,
            21,
        );
        let what = format!("signed: {signed}");
        let g = kiln::onnx::import(&bytes, Default::default(), Default::default()).unwrap();
        let o = kiln::optimize(&g, None, &Default::default()).unwrap();
        let ops: Vec<&str> = o
            .node_ids()
            .into_iter()
            .map(|id| o.node(id).op().mnemonic())
            .collect();
        assert!(
            ops.contains(&"qdot4") && !ops.contains(&"dot"),
            "{what}: {ops:?}"
        );
        let xt = Tensor::from_vec(vec![rows, k], x.clone()).unwrap();
        let inputs = [("x".to_string(), xt)];
        let close = |got: &[f32], how: &str| {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{what}, {how}: {got:?} vs {want:?}"
                );
            }
        };
        for (how, out) in runs(&bytes, &inputs) {
            close(out[0].1.as_slice::<f32>().unwrap(), &how);
        }
    }
}

/// MatMulNBits at `accuracy_level` 4 reads each block of A's rows as it quantizes to int8
/// (onnxruntime's int8 compute: `s = max|x| / 127`, `q = round(x · 127 / max|x|)` half to
/// even), compiled at 1 and 2 threads — few rows by the integer kernel, many by panels, a
/// weight small enough to dequantize once — and interpreted; lower levels keep f32 rows;
/// levels past 4 are errors naming the value.
#[test]
fn accuracy_level_4_quantizes_rows_to_int8() {
    let mut next = draws(23);
    for &(k, n, block, rows) in &[
        (200usize, 40usize, 32usize, 1usize),
        (96, 24, 16, 3),
        (300, 70, 128, 13),
        (64, 8, 32, 2),
    ] {
        let nb = k.div_ceil(block);
        let mut x: Vec<f32> = (0..rows * k)
            .map(|_| (next(2001) as f32 - 1000.0) / 317.0)
            .collect();
        // A block of zeros.
        x[..block.min(k)].fill(0.0);
        let q: Vec<u8> = (0..n * nb * block).map(|_| next(16) as u8).collect();
        let z: Vec<u8> = (0..n * nb).map(|_| next(16) as u8).collect();
        let scales: Vec<f32> = (0..n * nb).map(|_| 0.01 * (1 + next(9)) as f32).collect();
        // The rows as they quantize.
        let xq: Vec<f64> = x
            .chunks(k)
            .flat_map(|row| {
                row.chunks(block).flat_map(|b| {
                    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    let s = amax / 127.0;
                    b.iter()
                        .map(move |&v| f64::from((v * inv).round_ties_even() * s))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let weight = |j: usize, l: usize| {
            let b = j * nb + l / block;
            (f64::from(q[j * nb * block + l]) - f64::from(z[b])) * f64::from(scales[b])
        };
        let product = |xs: &dyn Fn(usize) -> f64| -> Vec<f64> {
            (0..rows * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k).map(|l| xs(i * k + l) * weight(j, l)).sum()
                })
                .collect()
        };
        let (int8, exact) = (product(&|e| xq[e]), product(&|e| f64::from(x[e])));
        // The two differ: the test tells them apart.
        assert!(int8
            .iter()
            .zip(&exact)
            .any(|(a, b)| (a - b).abs() > 1e-3 * b.abs().max(1.0)));
        for level in [0i64, 4] {
            let want = if level == 4 { &int8 } else { &exact };
            let dims = [k as i64, n as i64, 4, block as i64];
            let mm = matmul_nbits(&["x", "w", "s", "z"], dims, Some(level));
            let inits = vec![
                raw(
                    "w",
                    data_type::UINT8,
                    &[n as i64, nb as i64, (block / 2) as i64],
                    pack(&q, 4, nb * block),
                ),
                floats("s", &[(n * nb) as i64], &scales),
                raw(
                    "z",
                    data_type::UINT8,
                    &[(n * nb.div_ceil(2)) as i64],
                    pack(&z, 4, nb),
                ),
            ];
            let bytes = model(
                vec![mm],
                vec![vi("x", data_type::FLOAT, &[rows as i64, k as i64])],
                vec![vi("y", data_type::FLOAT, &[rows as i64, n as i64])],
                inits,
                21,
            );
            let bytes = importing_ms(&bytes);
            let xt = Tensor::from_vec(vec![rows, k], x.clone()).unwrap();
            let what = format!("{rows}×{k} by {n}, block {block}, level {level}");
            for (label, out) in runs(&bytes, &[("x".into(), xt)]) {
                let got = out[0].1.as_slice::<f32>().unwrap();
                for (e, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let close = (f64::from(g) - w).abs() <= 1e-4 * w.abs().max(1.0);
                    assert!(close, "{what}, {label}: element {e} is {g} not {w}");
                }
            }
        }
    }
    // Past 4: an error naming the level.
    let mm = matmul_nbits(&["x", "w", "s"], [32, 1, 4, 32], Some(5));
    let bytes = model(
        vec![mm],
        vec![vi("x", data_type::FLOAT, &[1, 32])],
        vec![vi("y", data_type::FLOAT, &[1, 1])],
        vec![
            raw("w", data_type::UINT8, &[1, 1, 16], vec![0x21; 16]),
            floats("s", &[1], &[0.5]),
        ],
        21,
    );
    let x = Tensor::from_vec(vec![1, 32], vec![1f32; 32]).unwrap();
    let err = Model::from_onnx(
        &importing_ms(&bytes),
        Default::default(),
        Default::default(),
    )
    .and_then(|m| m.run(&[("x".into(), x)]))
    .map(|_| ())
    .expect_err("accuracy_level 5 refused")
    .to_string();
    assert!(err.contains("accuracy_level is 5"), "{err}");
}
