//! The model suite: every model in `../shared/models` imports, runs on the reference
//! interpreter with its `inputs.npz`, and matches onnxruntime's `expected.npz` within the
//! `suggested_tol` of its `meta.json` (integer outputs such as labels and indices exactly), both
//! as imported and after the default optimization pipeline; the optimized graph must also match
//! the imported one on random inputs with fixed seeds.
//! Without the shared folder every test shows as ignored, `[SKIPPED: …]`.

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
    // The optimized graph computes what the imported one does on random inputs too.
    let bindings: HashMap<String, i64> = kiln::params(&graph)
        .iter()
        .flat_map(|(_, ty)| {
            ty.shape
                .dims()
                .iter()
                .flat_map(|d| d.symbols())
                .collect::<Vec<_>>()
        })
        .map(|s| (s.to_string(), 3))
        .collect();
    for seed in [1, 2] {
        let r = kiln::random_inputs(&graph, &bindings, seed).map_err(|e| e.to_string())?;
        let a = kiln::interpret(&graph, &r.inputs, &HashMap::new());
        let b = kiln::interpret(&optimized, &r.inputs, &HashMap::new());
        match (a, b) {
            (Ok(a), Ok(b)) => {
                for ((name, x), (_, y)) in a.iter().zip(&b) {
                    if let Some(why) = mismatch(y, x, tol) {
                        return Err(format!(
                            "random inputs (seed {seed}): output `{name}`: {why}"
                        ));
                    }
                }
            }
            (Err(e), Err(_)) => eprintln!("  random inputs (seed {seed}) fail both graphs: {e}"),
            (a, b) => {
                return Err(format!(
                    "random inputs (seed {seed}): imported {:?}, optimized {:?}",
                    a.err().map(|e| e.to_string()),
                    b.err().map(|e| e.to_string())
                ))
            }
        }
    }
    let exe =
        kiln::executable(&optimized, &Default::default()).map_err(|e| format!("compiling: {e}"))?;
    let (native, interp) = exe.coverage();
    eprintln!(
        "  {native} kernels compiled, {} nodes interpreted{}",
        interp.len(),
        interp
            .iter()
            .map(|(n, why)| format!("\n    {n}: {why}"))
            .collect::<String>()
    );
    // Every node of these models compiles (a kernel that lowering gives up on would run on
    // the interpreter: correct, and slow).
    if !interp.is_empty() {
        return Err(format!("{} nodes run on the interpreter", interp.len()));
    }
    // The ahead-of-time path: compiled into artifact bytes, loaded without the JIT.
    let bytes = kiln::artifact::compile(&optimized, &Default::default(), "host")
        .map_err(|e| format!("compiling an artifact: {e}"))?;
    let from_artifact = kiln::artifact::load(&bytes, &Default::default())
        .map_err(|e| format!("loading the artifact: {e}"))?;
    // The saved plan restores the same kernels (their IR survives serialization) and the
    // same fallbacks, and compiling twice gives the same bytes.
    if from_artifact.kernels_text() != exe.kernels_text()
        || from_artifact.coverage() != exe.coverage()
    {
        return Err("the artifact's kernels differ from the JIT's".into());
    }
    if kiln::artifact::compile(&optimized, &Default::default(), "host").ok() != Some(bytes) {
        return Err("compiling an artifact twice gives different bytes".into());
    }
    for what in ["imported", "optimized", "compiled", "from an artifact"] {
        let got = match what {
            "imported" => kiln::interpret(&graph, &inputs, &HashMap::new()),
            "optimized" => kiln::interpret(&optimized, &inputs, &HashMap::new()),
            "compiled" => kiln::execute(&exe, &inputs, &HashMap::new()),
            _ => kiln::execute(&from_artifact, &inputs, &HashMap::new()),
        }
        .map_err(|e| format!("{what}: {e}"))?;
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

fn main() {
    common::run_trials(vec![
        common::trial(
            "every_model_matches_onnxruntime",
            model_dirs(),
            every_model_matches_onnxruntime,
        ),
        common::trial("fusion_report", model_dirs(), fusion_report),
        common::trial(
            "optimized_ir_snapshots",
            model_dirs(),
            optimized_ir_snapshots,
        ),
    ]);
}

/// The shared models' folders, sorted, or why there are none.
fn model_dirs() -> Result<Vec<std::path::PathBuf>, String> {
    let root = common::shared_dir("models")?;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("read models")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn every_model_matches_onnxruntime(dirs: Vec<std::path::PathBuf>) {
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

/// Per model: non-Constant ONNX nodes, kernels and materialized intermediate bytes before and
/// after the default pipeline (bytes from the cost model). Every model's optimized graph keeps
/// in its kernels every intermediate a kernel could keep; bert_tiny and llama_tiny end with at
/// most 35% as many kernels as non-Constant ONNX nodes.
fn fusion_report(dirs: Vec<std::path::PathBuf>) {
    let target = kiln::passes::egraph::Target::default();
    let mut problems = Vec::new();
    eprintln!(
        "{:<20} {:>6} {:>8} {:>8} {:>14} {:>14}",
        "model", "nodes", "kernels", "ratio", "bytes before", "bytes after"
    );
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(d.join("model.onnx")).unwrap();
        let summary = kiln::onnx::inspect(&bytes, Default::default()).unwrap();
        let constants = summary
            .ops
            .iter()
            .find(|(op, _)| op == "Constant")
            .map_or(0, |(_, n)| *n);
        let nodes = summary.nodes - constants;
        let g = kiln::onnx::import(&bytes, Default::default(), HashMap::new()).unwrap();
        let o = kiln::optimize(&g, None, &HashMap::new()).unwrap();
        let (before, after) = (
            kiln::passes::report(&g, &target),
            kiln::passes::report(&o, &target),
        );
        let ratio = after.kernels as f64 / nodes as f64;
        eprintln!(
            "{name:<20} {nodes:>6} {:>8} {:>7.0}% {:>14.0} {:>14.0}",
            after.kernels,
            ratio * 100.0,
            before.intermediate_bytes,
            after.intermediate_bytes
        );
        for u in &after.unkept {
            problems.push(format!("{name}: not kept in a kernel: {u}"));
        }
        if ["bert_tiny", "llama_tiny"].contains(&name.as_str()) && ratio > 0.35 {
            problems.push(format!(
                "{name}: {} kernels for {nodes} nodes",
                after.kernels
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The optimized IR of every model, pinned (constants over 16 elements elided): any change to
/// what the optimizer does to a model shows up in review as a snapshot diff.
fn optimized_ir_snapshots(dirs: Vec<std::path::PathBuf>) {
    let shown = kiln::ir::PrintOptions {
        max_elements: Some(16),
    };
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(d.join("model.onnx")).unwrap();
        let g = kiln::onnx::import(&bytes, Default::default(), HashMap::new()).unwrap();
        let o = kiln::optimize(&g, None, &HashMap::new()).unwrap();
        let text = kiln::ir::print_module_with(&[o], &shown);
        insta::assert_snapshot!(name, text);
    }
}
