//! The quantized model suite (`tests/quantized/manifest.json`, built by
//! `tests/quantized/build.py` from ../shared/models into a cache): shared models quantized by
//! onnxruntime's own tools — dynamic int8 (MatMulInteger, ConvInteger), static QDQ int8, and
//! 4-bit MatMulNBits in blocks of 32 and 128 — each run as a user runs it (`kiln run MODEL
//! --inputs IN.npz`) and ahead of time (`kiln compile`, then `kiln run MODEL.kiln`), compared
//! with onnxruntime's outputs within the manifest's tolerance. One test per model, shown as
//! ignored, `[SKIPPED: …]`, when the cache (`$KILN_QUANT_CACHE`, default
//! `~/.cache/kiln-quantized`) lacks it.

mod common;
#[path = "common/suite.rs"]
mod suite;

use std::path::{Path, PathBuf};

use kiln::onnx::Tolerance;
use suite::{compare, kiln};

/// Models known not to match yet, with the reason; each must still fail so (the list shrinks
/// as issue 17 lands).
const KNOWN_FAILURES: &[(&str, &str)] = &[];

/// JIT, then AOT (an artifact specialized for the inputs); the first failure. A 4-bit
/// model's artifact (`nbits`) holds its weights packed: at most 1.25× the ONNX file.
fn check(dir: &Path, tol: Tolerance, nbits: bool) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (model, inputs, expected) = (
        dir.join("model.onnx"),
        dir.join("inputs.npz"),
        dir.join("expected.npz"),
    );
    let out = tmp.path().join("out.npz");
    kiln(&["run", &s(&model), "--inputs", &s(&inputs), "-o", &s(&out)])
        .map_err(|e| format!("run: {e}"))?;
    compare(&out, &expected, tol).map_err(|e| format!("run: {e}"))?;
    let art = tmp.path().join("model.kiln");
    let compile = [
        "compile",
        &s(&model),
        "-o",
        &s(&art),
        "--inputs",
        &s(&inputs),
    ];
    kiln(&compile).map_err(|e| format!("compile: {e}"))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (a, o) = (size(&art), size(&model));
    if nbits && a * 4 > o * 5 {
        return Err(format!(
            "the artifact is {a} bytes, the ONNX file {o}: 4-bit weights not kept packed"
        ));
    }
    let out = tmp.path().join("out_aot.npz");
    kiln(&["run", &s(&art), "--inputs", &s(&inputs), "-o", &s(&out)])
        .map_err(|e| format!("artifact: {e}"))?;
    compare(&out, &expected, tol).map_err(|e| format!("artifact: {e}"))
}

/// One model matches onnxruntime (JIT and AOT), or fails as KNOWN_FAILURES says.
fn check_model(name: &str, tol: Tolerance, dir: PathBuf) {
    let nbits = name.contains("nbits");
    suite::verdict(name, check(&dir, tol, nbits), KNOWN_FAILURES);
}

fn cache() -> PathBuf {
    match std::env::var_os("KILN_QUANT_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/kiln-quantized"),
    }
}

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quantized/manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("tests/quantized/manifest.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    let entries = v.as_array().expect("a list").clone();
    assert!(!entries.is_empty(), "the quantized manifest lists no model");
    for (name, _) in KNOWN_FAILURES {
        assert!(
            entries.iter().any(|e| e["name"] == *name),
            "KNOWN_FAILURES names {name}, not in the manifest"
        );
    }
    let trials = entries
        .into_iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let tol = Tolerance {
                rtol: e["rtol"].as_f64().unwrap(),
                atol: e["atol"].as_f64().unwrap(),
            };
            let dir = cache().join("models").join(&name);
            let found = Some(dir)
                .filter(|d| d.join("model.onnx").is_file() && d.join("expected.npz").is_file())
                .ok_or_else(|| {
                    "not in the cache (python3 tests/quantized/build.py builds it from \
                     ../shared/models)"
                        .to_string()
                });
            common::trial(format!("quantized::{name}"), found, move |d| {
                check_model(&name, tol, d)
            })
        })
        .collect();
    common::run_trials(trials);
}
