//! Robustness of ONNX decoding and import: byte-level mutations of real models (the committed
//! corpus models, and the node tests and small shared models when `../shared` is present) go
//! through decode, import (with symbolic shapes, and when that fails the specialization a run
//! makes, twice so the second comes from the cache) and, when the result is small, the
//! interpreter (and compiled execution for graphs with loops, checked facts or data-dependent
//! sizes). Errors are fine; panics are not. Long run: `PROPTEST_CASES=2000000 cargo test --release --test fuzz_onnx`.

mod common;

use std::collections::HashMap;

use common::onnx::{model, node, vi};
use kiln::frontends::onnx::proto::*;
use kiln::interp;
use proptest::prelude::*;

fn builtin() -> Vec<u8> {
    let shape = TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: data_type::INT64,
        int64_data: vec![3, 2],
        ..Default::default()
    };
    let nodes = vec![
        node("Relu", "relu", &["x"], &["r"], vec![]),
        node("Shape", "shape_of", &["r"], &["s"], vec![]),
        node("Reshape", "reshape", &["r", "shape"], &["y"], vec![]),
        node("Softmax", "softmax", &["y"], &["z"], vec![]),
    ];
    let (float, int64) = (data_type::FLOAT, data_type::INT64);
    model(
        nodes,
        vec![vi("x", float, &[2, 3])],
        vec![vi("z", float, &[3, 2]), vi("s", int64, &[2])],
        vec![shape],
        17,
    )
}

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut out = vec![builtin()];
        let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/models");
        let roots = ["onnx-node-tests/node", "models"]
            .into_iter()
            .filter_map(common::shared)
            .chain(std::iter::once(local));
        for root in roots {
            let mut paths: Vec<_> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("model.onnx"))
                .collect();
            paths.sort();
            for p in paths {
                if let Ok(b) = std::fs::read(&p) {
                    if b.len() <= 1 << 20 {
                        out.push(b);
                    }
                }
            }
        }
        out
    })
}

fn mutate(bytes: &[u8], muts: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(kind, x, y) in muts {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        let (i, j) = (x as usize % n, y as usize % n);
        match kind % 6 {
            0 => b[i] ^= 1 << (y % 8),
            1 => b[i] = y as u8,
            2 => {
                b.drain(i..(i + (y as usize % 16) + 1).min(n));
            }
            3 => b.insert(i, y as u8),
            4 => b.truncate(i),
            _ => {
                let (lo, hi) = (i.min(j), i.max(j).min(lo_plus(i.min(j), 64, n)));
                let chunk = b[lo..hi].to_vec();
                b.splice(i..i, chunk);
            }
        }
    }
    b
}

fn lo_plus(a: usize, k: usize, n: usize) -> usize {
    (a + k).min(n)
}

/// Import converts importer panics into errors; those are still bugs.
fn no_internal_error<T>(r: kiln::Result<T>) -> Option<T> {
    match r {
        Ok(x) => Some(x),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("internal error"), "{msg}");
            None
        }
    }
}

fn check(bytes: &[u8]) {
    let g = match kiln::onnx::import(bytes, Default::default(), HashMap::new()) {
        Ok(g) => g,
        Err(e) => {
            no_internal_error::<()>(Err(e));
            // What a run does next: specialize for inputs of the declared shapes (symbols 2),
            // twice (the second time from the cache).
            let Some(m) = no_internal_error(kiln::Model::from_onnx(
                bytes,
                Default::default(),
                Default::default(),
            )) else {
                return;
            };
            let bindings = symbols_as_two(m.params());
            if !small(m.params(), &bindings) {
                return;
            }
            let Ok(r) = kiln::random_inputs_for(m.params(), &bindings, 3) else {
                return;
            };
            for _ in 0..2 {
                let Some(g) = no_internal_error(m.graph_for(&r.inputs)) else {
                    return;
                };
                interpret_small(&g, &bindings);
            }
            return;
        }
    };
    interpret_small(&g, &symbols_as_two(&kiln::params(&g)));
}

fn symbols_as_two(params: &[(String, kiln::TensorType)]) -> HashMap<String, i64> {
    let mut bindings = HashMap::new();
    for (_, ty) in params {
        for d in ty.shape.dims() {
            for s in d.symbols() {
                bindings.insert(s.to_string(), 2);
            }
        }
    }
    bindings
}

fn small(params: &[(String, kiln::TensorType)], bindings: &HashMap<String, i64>) -> bool {
    params.iter().all(|(_, ty)| {
        ty.shape.eval(&|s| bindings.get(s).copied()).is_ok_and(|d| {
            d.iter().all(|&x| (0..4096).contains(&x)) && d.iter().product::<i64>() <= 4096
        })
    })
}

/// Runs a small graph on the interpreter with random inputs (any error is fine).
fn interpret_small(g: &kiln::Graph, bindings: &HashMap<String, i64>) {
    let params = kiln::params(g);
    if !small(&params, bindings) || g.len() > 2000 {
        return;
    }
    let Ok(v) = kiln::verify(g) else { return };
    let Ok(r) = kiln::random_inputs(g, bindings, 3) else {
        return;
    };
    let inputs: Vec<_> = r.inputs.into_iter().map(|(_, t)| t).collect();
    let opts = interp::Options {
        bindings: bindings.clone(),
        max_tensor_bytes: 1 << 20,
    };
    let interpreted = interp::run_with(&v, &inputs, &opts);
    // Loops, checked facts and data-dependent sizes have their own paths in compiled
    // execution (steps running bodies, per-binding checks, segmented plans): run those too.
    let special = g.node_ids().into_iter().any(|id| {
        let op = g.node(id).op();
        matches!(op, kiln::Op::Loop { .. } | kiln::Op::Refine { .. })
            || op.kind() == kiln::ir::OpKind::Dynamic
    });
    if special && interpreted.is_ok() {
        let opts = kiln::CompileOptions {
            threads: Some(1),
            ..Default::default()
        };
        if let Ok(exe) = kiln::executable(g, &opts) {
            let _ = exe.run_with(&inputs, bindings);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(300)))]

    #[test]
    fn mutated_models_never_panic(
        pick in any::<usize>(),
        muts in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..5),
    ) {
        let c = corpus();
        check(&mutate(&c[pick % c.len()], &muts));
    }
}

#[test]
fn unmutated_corpus_imports_without_panicking() {
    for m in corpus().iter().take(300) {
        check(m);
    }
}
