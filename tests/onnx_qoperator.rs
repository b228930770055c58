//! com.microsoft's QOperator ops (onnxruntime's `quantize_static(quant_format=QOperator)`, the
//! ONNX model zoo's int8 models), each run compiled at 1 and 2 threads and interpreted
//! against its definition computed here: the float op between dequantized inputs and a
//! quantized output (within one quantum: the float op's last bit may differ).

mod common;

use common::onnx::{floats, importing_ms, int_attr, ints_attr, model, node, raw, runs, vi};
use kiln::frontends::onnx::proto::*;
use kiln::{Model, Tensor};

/// `(q − z)·s`.
fn dq(q: u8, (s, z): (f32, u8)) -> f32 {
    (f32::from(q) - f32::from(z)) * s
}

/// `saturate(round(y/s) + z)`, half to even.
fn quant(y: f32, (s, z): (f32, u8)) -> u8 {
    ((y / s).round_ties_even() + f32::from(z)).clamp(0.0, 255.0) as u8
}

/// A float attribute.
fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f: v,
        ..Default::default()
    }
}

/// A u8 scalar initializer.
fn byte(name: &str, v: u8) -> TensorProto {
    raw(name, data_type::UINT8, &[], vec![v])
}

/// Runs one com.microsoft `op` on u8 inputs `xs` (named x0, x1, ...; the node's input list
/// `ins` names them and the initializers `inits`), checking its u8 output `y` of `dims`
/// against `want` (within one quantum), compiled at 1 and 2 threads and interpreted.
fn check(
    op: &str,
    ins: &[&str],
    attrs: Vec<AttributeProto>,
    xs: &[(&[i64], Vec<u8>)],
    inits: Vec<TensorProto>,
    (dims, want): (&[i64], Vec<u8>),
) {
    let mut n = node(op, "q", ins, &["y"], attrs);
    n.domain = "com.microsoft".into();
    let inputs = (xs.iter().enumerate())
        .map(|(i, (d, _))| vi(&format!("x{i}"), data_type::UINT8, d))
        .collect();
    let bytes = model(
        vec![n],
        inputs,
        vec![vi("y", data_type::UINT8, dims)],
        inits,
        13,
    );
    let bytes = importing_ms(&bytes);
    let feeds: Vec<(String, Tensor)> = (xs.iter().enumerate())
        .map(|(i, (d, v))| {
            let shape = d.iter().map(|&x| x as usize).collect();
            (format!("x{i}"), Tensor::from_vec(shape, v.clone()).unwrap())
        })
        .collect();
    let same = |got: &[u8], how: &str| {
        assert_eq!(got.len(), want.len(), "{op} {how}");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.abs_diff(w) <= 1,
                "{op} {how}: element {i} is {g}, not {w}"
            );
        }
    };
    for (how, out) in runs(&bytes, &feeds) {
        same(out[0].1.as_slice::<u8>().unwrap(), &how);
    }
}

/// `n` pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

#[test]
fn elementwise_ops_are_their_float_ops_between_quantizers() {
    let (a, b) = (bytes(24, 1), bytes(4, 2));
    let (qa, qb, qy) = ((0.05f32, 120u8), (0.1f32, 7u8), (0.08f32, 100u8));
    let scales = |ys: (f32, u8)| {
        vec![
            floats("as", &[], &[qa.0]),
            byte("az", qa.1),
            floats("bs", &[], &[qb.0]),
            byte("bz", qb.1),
            floats("ys", &[], &[ys.0]),
            byte("yz", ys.1),
        ]
    };
    // Add and Mul broadcast a [4] row over [2, 3, 4].
    for (op, f) in [
        (
            "QLinearAdd",
            (|x: f32, y: f32| x + y) as fn(f32, f32) -> f32,
        ),
        ("QLinearMul", |x, y| x * y),
    ] {
        let want = (0..24)
            .map(|i| quant(f(dq(a[i], qa), dq(b[i % 4], qb)), qy))
            .collect();
        check(
            op,
            &["x0", "as", "az", "x1", "bs", "bz", "ys", "yz"],
            vec![],
            &[(&[2, 3, 4], a.clone()), (&[4], b.clone())],
            scales(qy),
            (&[2, 3, 4], want),
        );
    }
    // Where: a condition (a constant here) picks X or Y, each dequantized its own way.
    let cond = [true, false, false, true];
    let want = (0..24)
        .map(|i| {
            let v = if cond[i % 4] {
                dq(a[i], qa)
            } else {
                dq(b[i % 4], qb)
            };
            quant(v, qy)
        })
        .collect();
    let mut inits = scales(qy);
    inits.push(raw("c", data_type::BOOL, &[4], cond.map(u8::from).to_vec()));
    check(
        "QLinearWhere",
        &["c", "x0", "as", "az", "x1", "bs", "bz", "ys", "yz"],
        vec![],
        &[(&[2, 3, 4], a.clone()), (&[4], b.clone())],
        inits,
        (&[2, 3, 4], want),
    );
    // Sigmoid, LeakyRelu (its alpha), over one input.
    let one = |ys: (f32, u8)| {
        vec![
            floats("as", &[], &[qa.0]),
            byte("az", qa.1),
            floats("ys", &[], &[ys.0]),
            byte("yz", ys.1),
        ]
    };
    let sig = (1.0 / 255.0, 0u8);
    let want = a
        .iter()
        .map(|&q| quant(1.0 / (1.0 + (-dq(q, qa)).exp()), sig))
        .collect();
    check(
        "QLinearSigmoid",
        &["x0", "as", "az", "ys", "yz"],
        vec![],
        &[(&[2, 3, 4], a.clone())],
        one(sig),
        (&[2, 3, 4], want),
    );
    let want = (a.iter())
        .map(|&q| {
            let x = dq(q, qa);
            quant(if x < 0.0 { 0.1 * x } else { x }, qy)
        })
        .collect();
    check(
        "QLinearLeakyRelu",
        &["x0", "as", "az", "ys", "yz"],
        vec![float_attr("alpha", 0.1)],
        &[(&[2, 3, 4], a.clone())],
        one(qy),
        (&[2, 3, 4], want),
    );
    // Softmax along the last axis (opset 13's), into u8 of scale 1/256.
    let sm = (1.0 / 256.0, 0u8);
    let want = (0..6)
        .flat_map(|r| {
            let row: Vec<f32> = (0..4).map(|j| dq(a[r * 4 + j], qa)).collect();
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|x| (x - m).exp()).collect();
            let t: f32 = e.iter().sum();
            e.into_iter()
                .map(move |v| quant(v / t, sm))
                .collect::<Vec<_>>()
        })
        .collect();
    check(
        "QLinearSoftmax",
        &["x0", "as", "az", "ys", "yz"],
        vec![int_attr("axis", -1), int_attr("opset", 13)],
        &[(&[2, 3, 4], a.clone())],
        one(sm),
        (&[2, 3, 4], want),
    );
    // Concat along axis 1 of inputs quantized differently: Y's scale and zero point first.
    let want = (0..2)
        .flat_map(|i| {
            let first = (0..12).map(|j| quant(dq(a[i * 12 + j], qa), qy));
            let second = (0..2).map(|j| quant(dq(b[i * 2 + j], qb), qy));
            first.chain(second).collect::<Vec<_>>()
        })
        .collect();
    check(
        "QLinearConcat",
        &["ys", "yz", "x0", "as", "az", "x1", "bs", "bz"],
        vec![int_attr("axis", 1)],
        &[(&[2, 12], a.clone()), (&[2, 2], b.clone())],
        scales(qy),
        (&[2, 14], want),
    );
}

#[test]
fn pools_and_reductions_are_their_float_ops_between_quantizers() {
    // [1, 2, 4, 4]: two channels of 4×4.
    let a = bytes(32, 3);
    let (qa, qy) = ((0.05f32, 120u8), (0.02f32, 128u8));
    let inits = || {
        vec![
            floats("as", &[], &[qa.0]),
            byte("az", qa.1),
            floats("ys", &[], &[qy.0]),
            byte("yz", qy.1),
        ]
    };
    let ins = ["x0", "as", "az", "ys", "yz"];
    let mean = |v: &mut dyn Iterator<Item = f32>| {
        let v: Vec<f32> = v.collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    let want: Vec<u8> = (0..2)
        .map(|c| quant(mean(&mut (0..16).map(|i| dq(a[c * 16 + i], qa))), qy))
        .collect();
    check(
        "QLinearGlobalAveragePool",
        &ins,
        vec![],
        &[(&[1, 2, 4, 4], a.clone())],
        inits(),
        (&[1, 2, 1, 1], want.clone()),
    );
    // The same image channels-last ([1, 4, 4, 2]).
    let nhwc: Vec<u8> = (0..32).map(|i| a[(i % 2) * 16 + i / 2]).collect();
    check(
        "QLinearGlobalAveragePool",
        &ins,
        vec![int_attr("channels_last", 1)],
        &[(&[1, 4, 4, 2], nhwc)],
        inits(),
        (&[1, 1, 1, 2], want),
    );
    // 2×2 windows, stride 2.
    let want: Vec<u8> = (0..8)
        .map(|o| {
            let (c, y, x) = (o / 4, (o / 2) % 2, o % 2);
            let taps = (0..4).map(|t| dq(a[c * 16 + (2 * y + t / 2) * 4 + 2 * x + t % 2], qa));
            quant(mean(&mut taps.into_iter()), qy)
        })
        .collect();
    check(
        "QLinearAveragePool",
        &ins,
        vec![
            ints_attr("kernel_shape", &[2, 2]),
            ints_attr("strides", &[2, 2]),
        ],
        &[(&[1, 2, 4, 4], a.clone())],
        inits(),
        (&[1, 2, 2, 2], want),
    );
    // The mean over axis 3, not kept.
    let want: Vec<u8> = (0..8)
        .map(|r| quant(mean(&mut (0..4).map(|j| dq(a[r * 4 + j], qa))), qy))
        .collect();
    check(
        "QLinearReduceMean",
        &ins,
        vec![ints_attr("axes", &[3]), int_attr("keepdims", 0)],
        &[(&[1, 2, 4, 4], a.clone())],
        inits(),
        (&[1, 2, 4], want),
    );
}

/// QGemm: (A − za)·(Bᵀ − zb) in i32 with B transposed and its scale and zero point per
/// column, the i32 bias, `alpha`, requantized to u8 — or left f32 without y's scale and
/// zero point.
#[test]
fn qgemm_is_the_integer_product_requantized() {
    let (m, k, n) = (3usize, 5usize, 4usize);
    let a = bytes(m * k, 5);
    let bq: Vec<i8> = bytes(n * k, 6).into_iter().map(|v| v as i8).collect();
    let (sa, za) = (0.04f32, 100u8);
    let sb: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32).collect();
    let zb: Vec<i8> = vec![0, 3, -2, 1];
    let c: Vec<i32> = vec![100, -50, 7, 0];
    let (alpha, ys, yz) = (0.5f32, 0.3f32, 128u8);
    let acc = |i: usize, j: usize| -> i32 {
        (0..k)
            .map(|l| {
                (i32::from(a[i * k + l]) - i32::from(za))
                    * (i32::from(bq[j * k + l]) - i32::from(zb[j]))
            })
            .sum()
    };
    let scale = |j: usize| alpha * sa * sb[j];
    let mut inits = vec![
        floats("as", &[], &[sa]),
        byte("az", za),
        raw(
            "b",
            data_type::INT8,
            &[n as i64, k as i64],
            bq.iter().map(|&v| v as u8).collect(),
        ),
        floats("bs", &[n as i64], &sb),
        raw(
            "bz",
            data_type::INT8,
            &[n as i64],
            zb.iter().map(|&v| v as u8).collect(),
        ),
        raw(
            "c",
            data_type::INT32,
            &[n as i64],
            c.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    let attrs = || vec![int_attr("transB", 1), float_attr("alpha", alpha)];
    let want = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let y = (acc(i, j) as f32 + c[j] as f32) * (scale(j) / ys);
            (y.round_ties_even() + f32::from(yz)).clamp(0.0, 255.0) as u8
        })
        .collect();
    inits.extend([floats("ys", &[], &[ys]), byte("yz", yz)]);
    check(
        "QGemm",
        &["x0", "as", "az", "b", "bs", "bz", "c", "ys", "yz"],
        attrs(),
        &[(&[m as i64, k as i64], a.clone())],
        inits.clone(),
        (&[m as i64, n as i64], want),
    );
    // Without y's scale and zero point: f32.
    inits.truncate(6);
    let mut q = node(
        "QGemm",
        "q",
        &["x0", "as", "az", "b", "bs", "bz", "c"],
        &["y"],
        attrs(),
    );
    q.domain = "com.microsoft".into();
    let bytes_ = model(
        vec![q],
        vec![vi("x0", data_type::UINT8, &[m as i64, k as i64])],
        vec![vi("y", data_type::FLOAT, &[m as i64, n as i64])],
        inits,
        13,
    );
    let model = Model::from_onnx(
        &importing_ms(&bytes_),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let x = Tensor::from_vec(vec![m, k], a.clone()).unwrap();
    let out = model.run(&[("x0".into(), x)]).unwrap();
    let got = out[0].1.as_slice::<f32>().unwrap();
    for (e, &g) in got.iter().enumerate() {
        let (i, j) = (e / n, e % n);
        let want = (acc(i, j) as f32 + c[j] as f32) * scale(j);
        assert!(
            (g - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{e}: {g} vs {want}"
        );
    }
    assert_eq!(got.len(), m * n);
}

/// MatMulIntegerToFloat and DynamicQuantizeMatMul (onnxruntime's fusions, in the models it
/// saves optimized): `(A − a_zero)·(B − b_zero)·a_scale·b_scale + bias`, B's scale and zero
/// point per column; A quantized as DynamicQuantizeLinear defines it for the second.
#[test]
fn fused_dynamic_products_are_the_ops_they_fuse() {
    let (m, k, n) = (3usize, 6usize, 4usize);
    let af: Vec<f32> = (0..m * k)
        .map(|i| (i as f32 * 0.37).sin() * 2.0 - 0.3)
        .collect();
    let bq: Vec<u8> = bytes(k * n, 9);
    let sb: Vec<f32> = (0..n).map(|j| 0.02 * (j + 1) as f32).collect();
    let zb: Vec<u8> = vec![128, 120, 130, 127];
    let bias: Vec<f32> = vec![0.5, -1.0, 0.25, 0.0];
    // DynamicQuantizeLinear of A.
    let lo = af.iter().copied().fold(0.0f32, f32::min);
    let hi = af.iter().copied().fold(0.0f32, f32::max);
    let sa = (hi - lo) / 255.0;
    let za = (-lo / sa).round_ties_even().clamp(0.0, 255.0) as u8;
    let aq: Vec<u8> = af.iter().map(|&x| quant(x, (sa, za))).collect();
    let want: Vec<f32> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let acc: i32 = (0..k)
                .map(|l| {
                    (i32::from(aq[i * k + l]) - i32::from(za))
                        * (i32::from(bq[l * n + j]) - i32::from(zb[j]))
                })
                .sum();
            acc as f32 * (sa * sb[j]) + bias[j]
        })
        .collect();
    let b_inits = || {
        vec![
            raw("b", data_type::UINT8, &[k as i64, n as i64], bq.clone()),
            floats("bs", &[n as i64], &sb),
            raw("bz", data_type::UINT8, &[n as i64], zb.clone()),
            floats("bias", &[n as i64], &bias),
        ]
    };
    let run = |op: &str, ins: &[&str], x: (i32, Tensor), inits: Vec<TensorProto>| {
        let mut q = node(op, "q", ins, &["y"], vec![]);
        q.domain = "com.microsoft".into();
        let dims = x.1.shape().iter().map(|&d| d as i64).collect::<Vec<_>>();
        let bytes = model(
            vec![q],
            vec![vi("x0", x.0, &dims)],
            vec![vi("y", data_type::FLOAT, &[m as i64, n as i64])],
            inits,
            13,
        );
        let feeds = [("x0".to_string(), x.1)];
        for (_, out) in runs(&importing_ms(&bytes), &feeds) {
            let got = out[0].1.as_slice::<f32>().unwrap();
            assert_eq!(got.len(), want.len());
            for (e, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{op} {e}: {g} vs {w}"
                );
            }
        }
    };
    let mut inits = b_inits();
    inits.extend([floats("as", &[], &[sa]), byte("az", za)]);
    let aqt = Tensor::from_vec(vec![m, k], aq.clone()).unwrap();
    run(
        "MatMulIntegerToFloat",
        &["x0", "b", "as", "bs", "az", "bz", "bias"],
        (data_type::UINT8, aqt),
        inits,
    );
    let aft = Tensor::from_vec(vec![m, k], af.clone()).unwrap();
    run(
        "DynamicQuantizeMatMul",
        &["x0", "b", "bs", "bz", "bias"],
        (data_type::FLOAT, aft),
        b_inits(),
    );
}

/// onnxruntime's own QuantizeLinear and DequantizeLinear (com.microsoft: its 16-bit QDQ
/// models before opset 21) are ONNX's: u16 values quantized and dequantized per tensor.
#[test]
fn contrib_quantizers_are_onnx_quantizers() {
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.73 - 3.0).collect();
    let (s, z) = (0.001f32, 3000u16);
    let mut q = node("QuantizeLinear", "q", &["x0", "s", "z"], &["q"], vec![]);
    let mut d = node("DequantizeLinear", "d", &["q", "s", "z"], &["y"], vec![]);
    q.domain = "com.microsoft".into();
    d.domain = "com.microsoft".into();
    let bytes = model(
        vec![q, d],
        vec![vi("x0", data_type::FLOAT, &[12])],
        vec![vi("y", data_type::FLOAT, &[12])],
        vec![
            floats("s", &[], &[s]),
            raw("z", data_type::UINT16, &[], z.to_le_bytes().to_vec()),
        ],
        13,
    );
    let feeds = [(
        "x0".to_string(),
        Tensor::from_vec(vec![12], x.clone()).unwrap(),
    )];
    for (_, out) in runs(&importing_ms(&bytes), &feeds) {
        let got = out[0].1.as_slice::<f32>().unwrap();
        for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
            let q = ((v / s).round_ties_even() + f32::from(z)).clamp(0.0, 65535.0);
            let want = (q - f32::from(z)) * s;
            assert_eq!(g.to_bits(), want.to_bits(), "{i}: {g} vs {want}");
        }
    }
}
