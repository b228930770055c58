//! The real-model corpus (`tests/corpus/manifest.json`, rebuilt by `tests/corpus/build.py`):
//! ONNX files real projects ship, each run as a user runs it — `kiln run MODEL --inputs
//! IN.npz`, no `--dim` — and ahead of time (`kiln compile`, symbolic when the model imports so,
//! else specialized for the inputs with `--inputs`; then `kiln run MODEL.kiln`), all compared
//! with onnxruntime's outputs; a model that imports symbolically also runs with `--symbolic`
//! (one executable for every shape instead of kernels for the inputs' shapes). Models of at most 2 MB are committed; larger ones live in the
//! cache the build script fills (`$KILN_CORPUS_CACHE`, default `~/.cache/kiln-corpus`); one
//! test per model, shown as ignored, `[SKIPPED: …]`, when the model is absent.
//!
//! Also the ONNX wheel's own backend suites (`simple`, `pytorch-converted`,
//! `pytorch-operator`) through `kiln conformance`, found through `$KILN_ONNX_DATA` or the
//! `onnx` package of `python3`: every case passes but training (`Gradient`) and string ops
//! (`[SKIPPED: …]` without the wheel).

mod common;
#[path = "common/suite.rs"]
mod suite;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::onnx::Tolerance;
use suite::{compare, kiln};

/// Models known not to match yet, with the reason; each must still fail (so the list shrinks
/// when one is fixed).
const KNOWN_FAILURES: &[(&str, &str)] = &[];

struct Entry {
    name: String,
    rtol: f64,
    atol: f64,
}

fn manifest() -> Vec<Entry> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/manifest.json");
    let text = std::fs::read_to_string(&root).expect("tests/corpus/manifest.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|m| Entry {
            name: m["name"].as_str().unwrap().to_string(),
            rtol: m["rtol"].as_f64().unwrap(),
            atol: m["atol"].as_f64().unwrap(),
        })
        .collect()
}

fn cache() -> PathBuf {
    match std::env::var_os("KILN_CORPUS_CACHE") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln-corpus")
        }
    }
}

fn model_dir(name: &str) -> Option<PathBuf> {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/models")
        .join(name);
    let cached = cache().join("models").join(name);
    [committed, cached]
        .into_iter()
        .find(|d| d.join("model.onnx").is_file() && d.join("expected.npz").is_file())
}

/// JIT then AOT; the first failure.
fn check(dir: &Path, tmp: &Path, tol: Tolerance) -> Result<(), String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (model, inputs, expected) = (
        dir.join("model.onnx"),
        dir.join("inputs.npz"),
        dir.join("expected.npz"),
    );
    let out = tmp.join("out.npz");
    kiln(&["run", &s(&model), "--inputs", &s(&inputs), "-o", &s(&out)])
        .map_err(|e| format!("run: {e}"))?;
    compare(&out, &expected, tol).map_err(|e| format!("run: {e}"))?;
    let art = tmp.join("model.kiln");
    // Symbolic when the model imports that way (then its JIT for every shape is checked
    // too); else specialized for the inputs.
    if kiln(&["compile", &s(&model), "-o", &s(&art)]).is_ok() {
        let out = tmp.join("out_symbolic.npz");
        let args = [
            "run",
            &s(&model),
            "--symbolic",
            "--inputs",
            &s(&inputs),
            "-o",
            &s(&out),
        ];
        kiln(&args).map_err(|e| format!("run --symbolic: {e}"))?;
        compare(&out, &expected, tol).map_err(|e| format!("run --symbolic: {e}"))?;
    } else {
        kiln(&[
            "compile",
            &s(&model),
            "-o",
            &s(&art),
            "--inputs",
            &s(&inputs),
        ])
        .map_err(|e| format!("compile: {e}"))?;
    }
    let out = tmp.join("out_aot.npz");
    kiln(&["run", &s(&art), "--inputs", &s(&inputs), "-o", &s(&out)])
        .map_err(|e| format!("artifact: {e}"))?;
    compare(&out, &expected, tol).map_err(|e| format!("artifact: {e}"))
}

fn main() {
    let mut trials: Vec<_> = manifest()
        .into_iter()
        .map(|e| {
            let found = model_dir(&e.name).ok_or_else(|| {
                "not in the cache (python3 tests/corpus/build.py fetches it)".to_string()
            });
            let name = format!("corpus::{}", e.name);
            common::trial(name, found, move |dir| check_entry(&e, &dir))
        })
        .collect();
    assert!(!trials.is_empty(), "the corpus manifest lists no model");
    trials.push(common::trial(
        "onnx_wheel_suites_pass_but_training_and_strings",
        onnx_data().ok_or_else(|| "no ONNX wheel (pip install onnx, or set KILN_ONNX_DATA)".into()),
        onnx_wheel_suites,
    ));
    common::run_trials(trials);
}

/// One corpus model matches onnxruntime (JIT and AOT), or fails as KNOWN_FAILURES says.
fn check_entry(e: &Entry, dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let tol = Tolerance {
        rtol: e.rtol,
        atol: e.atol,
    };
    suite::verdict(&e.name, check(dir, tmp.path(), tol), KNOWN_FAILURES);
}

/// The `onnx/backend/test/data` folder of the ONNX wheel, if there is one.
fn onnx_data() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_ONNX_DATA") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args(["-c", "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data'))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_dir()).then_some(p)
}

fn onnx_wheel_suites(data: PathBuf) {
    for (suite, min) in [
        ("simple", 15),
        ("pytorch-converted", 82),
        ("pytorch-operator", 35),
    ] {
        let dir = data.join(suite);
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "conformance",
                dir.to_str().unwrap(),
                "--verbose",
                "--backend",
                "jit",
            ])
            .output()
            .expect("run kiln conformance");
        let so = String::from_utf8_lossy(&out.stdout);
        let unexpected: Vec<&str> = so
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .filter(|l| !l.contains("Gradient") && !l.contains("data type STRING"))
            .collect();
        let summary = so.lines().last().unwrap_or_default();
        eprintln!("{suite}: {summary}");
        assert!(unexpected.is_empty(), "{suite}:\n{}", unexpected.join("\n"));
        let passed: usize = summary
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(passed >= min, "{suite}: {summary}");
    }
}
