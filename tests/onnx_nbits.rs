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
            let mut mm = node(
                "MatMulNBits",
                "mm",
                &inputs,
                &["y"],
                vec![
                    int_attr("K", k as i64),
                    int_attr("N", n as i64),
                    int_attr("bits", bits as i64),
                    int_attr("block_size", block as i64),
                ],
            );
            mm.domain = "com.microsoft".into();
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
    let mut mm = node(
        "MatMulNBits",
        "mm",
        &["x", "w", "s"],
        &["y"],
        vec![
            int_attr("K", k),
            int_attr("N", n),
            int_attr("bits", 8),
            int_attr("block_size", block),
        ],
    );
    mm.domain = "com.microsoft".into();
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
