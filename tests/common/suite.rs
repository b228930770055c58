//! What the model-suite tests (`corpus.rs`, `quantized.rs`) share: the kiln binary run as a
//! user runs it, outputs compared with a reference archive, and the known-failures verdict.
//! Included by path from those tests (it needs the binary, which not every test crate has).

use std::path::Path;
use std::process::Command;

use kiln::onnx::{mismatch, Tolerance};

/// Runs `kiln ARGS`: its stderr on success, else its first error line (a panic fails the
/// test).
pub fn kiln(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln");
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!se.contains("panicked"), "kiln {args:?} panicked:\n{se}");
    if out.status.success() {
        Ok(se)
    } else {
        Err(se
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or(&se)
            .to_string())
    }
}

/// Every output of archive `want` is in `got` and matches it within `tol`.
pub fn compare(got: &Path, want: &Path, tol: Tolerance) -> Result<(), String> {
    let read = |p: &Path| {
        kiln::npz::read_npz(&std::fs::read(p).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    };
    let (got, want) = (read(got)?, read(want)?);
    for (name, w) in &want {
        let g = got
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no output {name}"))?;
        if let Some(why) = mismatch(&g.1, w, tol) {
            return Err(format!("output {name}: {why}"));
        }
    }
    Ok(())
}

/// Model `name`'s check passed, or failed as `known` (name, reason) says: anything else
/// fails the test, a known failure that now passes included (so the list shrinks).
pub fn verdict(name: &str, result: Result<(), String>, known: &[(&str, &str)]) {
    let known = known.iter().find(|(n, _)| *n == name);
    match (result, known) {
        (Ok(()), None) => {}
        (Ok(()), Some(_)) => panic!("{name} now passes: take it off KNOWN_FAILURES"),
        (Err(why), Some((_, reason))) if why.contains(reason) => {
            eprintln!("known failure {name}: {why}")
        }
        (Err(why), _) => panic!("{name}: {why}"),
    }
}
