//! The model suite: every model in `../shared/models` imports, runs on the reference
//! interpreter with its `inputs.npz`, and matches onnxruntime's `expected.npz` within the
//! `suggested_tol` of its `meta.json` (integer outputs such as labels and indices exactly), both
//! as imported and after the default optimization pipeline.
//! Skips, saying so, when the shared folder is missing.

mod common;

use std::collections::HashMap;
use std::path::Path;

use kiln::onnx::{mismatch, Tolerance};

fn check_model(dir: &Path) -> Result<(), String> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let meta: serde_json::Value =
        serde_json::from_slice(&read("meta.json")?).map_err(|e| e.to_string())?;
    let tol = Tolerance {
        rtol: meta["suggested_tol"]["rtol"].as_f64().unwrap_or(1e-3),
        atol: meta["suggested_tol"]["atol"].as_f64().unwrap_or(1e-4),
    };
    let inputs = kiln::npz::read_npz(&read("inputs.npz")?).map_err(|e| e.to_string())?;
    let expected = kiln::npz::read_npz(&read("expected.npz")?).map_err(|e| e.to_string())?;
    let graph = kiln::onnx::import(&read("model.onnx")?, Default::default(), HashMap::new())
        .map_err(|e| e.to_string())?;
    let optimized = kiln::optimize(&graph, None, &HashMap::new()).map_err(|e| e.to_string())?;
    for (what, g) in [("imported", &graph), ("optimized", &optimized)] {
        let got =
            kiln::interpret(g, &inputs, &HashMap::new()).map_err(|e| format!("{what}: {e}"))?;
        for (name, want) in &expected {
            let (_, t) = got
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("{what}: no output `{name}`"))?;
            if let Some(why) = mismatch(t, want, tol) {
                return Err(format!("{what}: output `{name}`: {why}"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_model_matches_onnxruntime() {
    let Some(root) = common::shared("models") else {
        return;
    };
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("read models")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let start = std::time::Instant::now();
        match check_model(d) {
            Ok(()) => eprintln!("{name:<22} ok ({:.2}s)", start.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("{name:<22} FAIL: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    eprintln!(
        "models: {} of {} match",
        dirs.len() - failures.len(),
        dirs.len()
    );
    assert!(
        failures.is_empty(),
        "models that do not match:\n{}",
        failures.join("\n")
    );
    assert_eq!(dirs.len(), 17, "expected the 17 shared models");
}
