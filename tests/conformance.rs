//! The ONNX backend node tests (`../shared/onnx-node-tests/node`) through `kiln conformance`.
//! `tests/conformance/expected-pass.txt` lists the cases that pass; any of them failing is a
//! regression and fails this test, so the pass count only goes up. New passes are reported;
//! `KILN_BLESS=1` rewrites the list. No case may fail by panicking. The same list must pass
//! with `--backend jit` (the default pipeline, then compiled code). Without the shared folder
//! both tests show as ignored, `[SKIPPED: …]`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn main() {
    let dir = || common::shared_dir("onnx-node-tests/node");
    common::run_trials(vec![
        common::trial("conformance_does_not_regress", dir(), |d| {
            check_backend(&d, "interp")
        }),
        // Every case that passes on the interpreter passes optimized and compiled too.
        common::trial("conformance_compiled_matches", dir(), |d| {
            check_backend(&d, "jit")
        }),
    ]);
}

fn check_backend(dir: &Path, backend: &str) {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/expected-pass.txt");
    let tmp = tempfile::tempdir().unwrap();
    let passing_file = tmp.path().join("passing.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "conformance",
            dir.to_str().unwrap(),
            "--verbose",
            "--backend",
            backend,
            "--write-passing",
            passing_file.to_str().unwrap(),
        ])
        .output()
        .expect("run kiln conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kiln conformance failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    eprintln!("{summary}");
    let panics: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("internal error (panic)"))
        .collect();
    assert!(
        panics.is_empty(),
        "cases failed by panicking:\n{}",
        panics.join("\n")
    );
    let read = |p: &Path| -> BTreeSet<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    let passing = read(&passing_file);
    if backend == "interp" && std::env::var("KILN_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        let text: String = passing.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&list, text).unwrap();
    }
    let expected = read(&list);
    let regressed: Vec<&String> = expected.difference(&passing).collect();
    let new: Vec<&String> = passing.difference(&expected).collect();
    if !new.is_empty() {
        eprintln!(
            "{} cases pass that the list does not have yet (KILN_BLESS=1 adds them): {new:?}",
            new.len()
        );
    }
    let reasons: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            regressed
                .iter()
                .any(|c| l.starts_with(&format!("FAIL {c}:")))
        })
        .collect();
    assert!(
        regressed.is_empty(),
        "{} cases regressed:\n{}",
        regressed.len(),
        reasons.join("\n")
    );
    assert!(
        expected.len() >= 1300,
        "the expected-pass list has only {} cases",
        expected.len()
    );
}
