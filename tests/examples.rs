//! Runs the builder-API examples and checks their results against plain-Rust reference
//! computations, at several values of their symbolic dimension.

#[allow(dead_code)]
#[path = "../examples/mlp.rs"]
mod mlp;

#[allow(dead_code)]
#[path = "../examples/attention.rs"]
mod attention;

use kiln::{DType, Graph, Rng, Tensor};

fn weights(g: &Graph, name: &str) -> Vec<f64> {
    for id in g.node_ids() {
        if let kiln::Op::Constant { value } = g.node(id).op() {
            if value.name.as_deref() == Some(name) {
                return value.tensor.to_f64_vec();
            }
        }
    }
    panic!("no constant @{name}");
}

/// Row-major [m, k] x [k, n].
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

fn softmax_rows(x: &mut [f64], n: usize) {
    for row in x.chunks_mut(n) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row.iter_mut().for_each(|v| *v = (*v - m).exp());
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
}

fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
    let got = got.to_f64_vec();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn mlp_runs_at_batch_1_and_7() {
    let g = mlp::build().unwrap();
    let (w1, b1, w2, b2) = (
        weights(&g, "w1"),
        weights(&g, "b1"),
        weights(&g, "w2"),
        weights(&g, "b2"),
    );
    for batch in [1usize, 7] {
        let x = Rng::new(batch as u64).tensor(DType::F32, &[batch, 4]);
        let out = kiln::interpret(&g, &[("x".into(), x.clone())], &Default::default()).unwrap();
        assert_eq!(out[0].0, "probs");
        assert_eq!(out[0].1.shape(), &[batch, 3]);
        let mut h = matmul(&x.to_f64_vec(), &w1, batch, 4, 16);
        for (i, v) in h.iter_mut().enumerate() {
            *v = (*v + b1[i % 16]).max(0.0);
        }
        let mut y = matmul(&h, &w2, batch, 16, 3);
        for (i, v) in y.iter_mut().enumerate() {
            *v += b2[i % 3];
        }
        softmax_rows(&mut y, 3);
        assert_close(&out[0].1, &y, 1e-6);
    }
}

#[test]
fn mlp_rejects_a_wrong_feature_count() {
    let g = mlp::build().unwrap();
    let x = Rng::new(0).tensor(DType::F32, &[2, 5]);
    let e = kiln::interpret(&g, &[("x".into(), x)], &Default::default()).unwrap_err();
    assert_eq!(e.to_string(), "input \"x\": axis 1 has size 5, expected 4");
}

#[test]
fn attention_matches_a_reference() {
    let (d, heads) = (8usize, 2usize);
    let dh = d / heads;
    let g = attention::build(d, heads).unwrap();
    let (wq, wk, wv, wo) = (
        weights(&g, "wq"),
        weights(&g, "wk"),
        weights(&g, "wv"),
        weights(&g, "wo"),
    );
    for seq in [1usize, 3, 6] {
        let x = Rng::new(seq as u64).tensor(DType::F32, &[seq, d]);
        let xv = x.to_f64_vec();
        let (q, k, v) = (
            matmul(&xv, &wq, seq, d, d),
            matmul(&xv, &wk, seq, d, d),
            matmul(&xv, &wv, seq, d, d),
        );
        let mut o = vec![0.0; seq * d];
        for h in 0..heads {
            let mut s = vec![0.0; seq * seq];
            for i in 0..seq {
                for j in 0..seq {
                    let dotp: f64 = (0..dh)
                        .map(|c| q[i * d + h * dh + c] * k[j * d + h * dh + c])
                        .sum();
                    s[i * seq + j] = dotp / (dh as f64).sqrt();
                }
            }
            softmax_rows(&mut s, seq);
            for i in 0..seq {
                for c in 0..dh {
                    o[i * d + h * dh + c] = (0..seq)
                        .map(|j| s[i * seq + j] * v[j * d + h * dh + c])
                        .sum();
                }
            }
        }
        let want = matmul(&o, &wo, seq, d, d);
        let out = kiln::interpret(&g, &[("x".into(), x)], &Default::default()).unwrap();
        assert_eq!(out[0].1.shape(), &[seq, d]);
        assert_close(&out[0].1, &want, 1e-5);
    }
}

/// The shipped `examples/mlp.kir` is the text of the MLP example, so README's command runs
/// the same model the builder example constructs.
#[test]
fn shipped_kir_matches_the_builder_example() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mlp.kir")).unwrap();
    let parsed = kiln::parse_graph(&text).unwrap();
    assert_eq!(parsed, mlp::build().unwrap());
    assert_eq!(kiln::print_graph(&parsed), text);
}

#[allow(dead_code)]
#[path = "../examples/jit.rs"]
mod jit;

/// The JIT example's compiled outputs equal the interpreter's.
#[test]
fn jit_example_matches_the_interpreter() {
    let (got, want) = jit::run().expect("the example runs");
    assert_eq!(got.len(), 2);
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
    };
    for ((name, t), (_, w)) in got.iter().zip(&want) {
        assert!(kiln::onnx::mismatch(t, w, tol).is_none(), "{name}");
    }
}
