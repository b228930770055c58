//! Recurrent layers against reference outputs, and batch-major against sequence-major.
//!
//! `tests/recurrent/` holds small LSTM, GRU and RNN nodes in the variants the spec allows
//! (directions, sequence lengths, clip, batch-major layout, linear_before_reset,
//! input_forget, peepholes, no bias or initial state, 300 steps run as a loop) with
//! onnxruntime's outputs (the ONNX reference implementation's where onnxruntime refuses the
//! node); `tests/recurrent/build.py` rebuilds them. Batch-major layers (`layout = 1`: X
//! [batch, seq, input], the states [batch, dirs, hidden], Y [batch, seq, dirs, hidden]) also
//! compute what the sequence-major layout does on the transposed tensors (the import once read
//! their initial states as direction-major).

mod common;

use common::onnx::{model, node, vi};
use kiln::frontends::onnx::proto::*;
use kiln::onnx::{mismatch, Tolerance};
use kiln::{Model, Tensor};

const SEQ: usize = 4;
const BATCH: usize = 2;
const INPUT: usize = 3;
const HIDDEN: usize = 5;
const DIRS: usize = 2;

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn floats(name: &str, dims: &[i64], v: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: v,
        ..Default::default()
    }
}

/// The layer `op` (with `gates` gates) in `layout`, bidirectional, weights from fixed seeds.
fn layer(op: &str, gates: usize, layout: i64) -> Vec<u8> {
    let f = data_type::FLOAT;
    let (s, b, i, h, d) = (
        SEQ as i64,
        BATCH as i64,
        INPUT as i64,
        HIDDEN as i64,
        DIRS as i64,
    );
    let g = gates as i64;
    let inits = vec![
        floats(
            "W",
            &[d, g * h, i],
            values(DIRS * gates * HIDDEN * INPUT, 1),
        ),
        floats(
            "R",
            &[d, g * h, h],
            values(DIRS * gates * HIDDEN * HIDDEN, 2),
        ),
        floats("B", &[d, 2 * g * h], values(DIRS * 2 * gates * HIDDEN, 3)),
    ];
    let lstm = op == "LSTM";
    let (x, state, y) = match layout {
        0 => (vec![s, b, i], vec![d, b, h], vec![s, d, b, h]),
        _ => (vec![b, s, i], vec![b, d, h], vec![b, s, d, h]),
    };
    let mut inputs = vec![vi("x", f, &x), vi("h0", f, &state)];
    let mut ins = vec!["x", "W", "R", "B", "", "h0"];
    let mut outs = vec!["y", "yh"];
    let mut outputs = vec![vi("y", f, &y), vi("yh", f, &state)];
    if lstm {
        inputs.push(vi("c0", f, &state));
        ins.push("c0");
        outs.push("yc");
        outputs.push(vi("yc", f, &state));
    }
    let attrs = vec![
        AttributeProto {
            name: "hidden_size".into(),
            r#type: attr_type::INT,
            i: h,
            ..Default::default()
        },
        AttributeProto {
            name: "layout".into(),
            r#type: attr_type::INT,
            i: layout,
            ..Default::default()
        },
        AttributeProto {
            name: "direction".into(),
            r#type: attr_type::STRING,
            s: b"bidirectional".to_vec(),
            ..Default::default()
        },
    ];
    let n = node(op, "rnn", &ins, &outs, attrs);
    model(vec![n], inputs, outputs, inits, 14)
}

/// `t` (row-major, `dims`) with its axes permuted by `perm`.
fn transposed(t: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let strides: Vec<usize> = (0..dims.len())
        .map(|a| dims[a + 1..].iter().product())
        .collect();
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    for flat in 0..n {
        // The output index, axis by axis, read from the input through the permutation.
        let (mut rest, mut at) = (flat, 0);
        for (a, &p) in perm.iter().enumerate() {
            let inner: usize = out_dims[a + 1..].iter().product();
            at += rest / inner * strides[p];
            rest %= inner;
        }
        out.push(t[at]);
    }
    out
}

fn tensor(dims: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::new(dims.to_vec(), ir::Data::F32(v)).unwrap()
}

fn run(bytes: &[u8], inputs: Vec<(&str, Tensor)>) -> Vec<Vec<f32>> {
    let m = Model::from_onnx(bytes, Default::default(), Default::default()).unwrap();
    let inputs: Vec<(String, Tensor)> = inputs.into_iter().map(|(n, t)| (n.into(), t)).collect();
    m.run(&inputs)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t.as_slice::<f32>().unwrap().to_vec())
        .collect()
}

#[test]
fn batch_major_layers_compute_the_transposed_sequence_major_ones() {
    for (op, gates) in [("LSTM", 4), ("GRU", 3), ("RNN", 1)] {
        let x = values(SEQ * BATCH * INPUT, 4);
        let h0 = values(DIRS * BATCH * HIDDEN, 5);
        let c0 = values(DIRS * BATCH * HIDDEN, 6);
        let (xd, sd) = ([SEQ, BATCH, INPUT], [DIRS, BATCH, HIDDEN]);
        let swap = [1, 0, 2];
        let mut seq_major = vec![
            ("x", tensor(&xd, x.clone())),
            ("h0", tensor(&sd, h0.clone())),
        ];
        let mut batch_major = vec![
            (
                "x",
                tensor(&[BATCH, SEQ, INPUT], transposed(&x, &xd, &swap)),
            ),
            (
                "h0",
                tensor(&[BATCH, DIRS, HIDDEN], transposed(&h0, &sd, &swap)),
            ),
        ];
        if op == "LSTM" {
            seq_major.push(("c0", tensor(&sd, c0.clone())));
            batch_major.push((
                "c0",
                tensor(&[BATCH, DIRS, HIDDEN], transposed(&c0, &sd, &swap)),
            ));
        }
        let want = run(&layer(op, gates, 0), seq_major);
        let got = run(&layer(op, gates, 1), batch_major);
        // Y [seq, dirs, batch, hidden] → [batch, seq, dirs, hidden]; the states swap axes.
        let yd = [SEQ, DIRS, BATCH, HIDDEN];
        let mut expect = vec![transposed(&want[0], &yd, &[2, 0, 1, 3])];
        for w in &want[1..] {
            expect.push(transposed(w, &sd, &swap));
        }
        assert_eq!(got.len(), expect.len(), "{op}");
        for (k, (g, e)) in got.iter().zip(&expect).enumerate() {
            for (j, (a, b)) in g.iter().zip(e).enumerate() {
                assert!((a - b).abs() <= 1e-6, "{op} output {k} at {j}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn every_variant_matches_the_reference_outputs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recurrent");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/recurrent")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".onnx").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 30, "{} fixtures in {dir:?}", names.len());
    let read = |f: String| std::fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let tol = Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
    };
    let mut failures = Vec::new();
    for name in &names {
        let m = Model::from_onnx(
            &read(format!("{name}.onnx")),
            Default::default(),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let inputs = kiln::npz::read_npz(&read(format!("{name}.in.npz"))).unwrap();
        let want = kiln::npz::read_npz(&read(format!("{name}.out.npz"))).unwrap();
        let got = m.run(&inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (out, w) in &want {
            let g = got.iter().find(|(n, _)| n == out).map(|(_, t)| t);
            match g.map(|g| mismatch(g, w, tol)) {
                None => failures.push(format!("{name}: no output {out}")),
                Some(Some(why)) => failures.push(format!("{name}: {out}: {why}")),
                Some(None) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
