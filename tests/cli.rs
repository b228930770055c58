//! The `kiln` binary end to end: commands, exit codes and diagnostics, including bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::{npz, Tensor};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs kiln, asserts the exit status and that nothing panicked; returns (stdout, stderr).
fn expect(args: &[&str], success: bool) -> (String, String) {
    let out = kiln(args);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(!se.contains("panicked"), "kiln {args:?} panicked:\n{se}");
    assert_eq!(
        out.status.success(),
        success,
        "kiln {args:?}\nstdout:\n{so}\nstderr:\n{se}"
    );
    (so, se)
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn runs_the_shipped_example_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npz");
    let (so, _) = expect(
        &[
            "run",
            "examples/mlp.kir",
            "--inputs",
            "examples/mlp_inputs.npz",
            "-o",
            s(&out),
        ],
        true,
    );
    assert!(so.starts_with("probs: f32[5, 3] = ["), "{so}");
    let outs = npz::read_npz(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(outs[0].0, "probs");
    let p = outs[0].1.to_f64_vec();
    for row in p.chunks(3) {
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-6,
            "softmax rows sum to 1"
        );
    }
}

#[test]
fn random_inputs_bind_symbols() {
    let (so, _) = expect(
        &[
            "run",
            "examples/mlp.kir",
            "--random-inputs",
            "--dim",
            "batch=7",
        ],
        true,
    );
    assert!(so.starts_with("probs: f32[7, 3]"), "{so}");
    let (so, se) = expect(
        &["run", "examples/mlp.kir", "--random-inputs", "--full"],
        true,
    );
    assert!(so.starts_with("probs: f32[1, 3] = [["), "{so}");
    assert!(se.contains("symbol `batch` set to 1"), "{se}");
}

#[test]
fn missing_inputs_are_explained() {
    let (_, se) = expect(&["run", "examples/mlp.kir"], false);
    assert!(
        se.contains("@mlp needs inputs x: pass --inputs FILE.npz or --random-inputs"),
        "{se}"
    );
}

#[test]
fn wrong_input_shape_and_dtype_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad_shape = npz::write_npz(&[(
        "x".into(),
        Tensor::from_vec(vec![2, 5], vec![0.0f32; 10]).unwrap(),
    )])
    .unwrap();
    let p = write(dir.path(), "shape.npz", &bad_shape);
    let (_, se) = expect(&["run", "examples/mlp.kir", "--inputs", s(&p)], false);
    assert!(
        se.contains("input \"x\": axis 1 has size 5, expected 4"),
        "{se}"
    );
    let bad_dtype = npz::write_npz(&[(
        "x".into(),
        Tensor::from_vec(vec![2, 4], vec![0i64; 8]).unwrap(),
    )])
    .unwrap();
    let p = write(dir.path(), "dtype.npz", &bad_dtype);
    let (_, se) = expect(&["run", "examples/mlp.kir", "--inputs", s(&p)], false);
    assert!(
        se.contains("input \"x\": expected f32[batch, 4], got i64[2, 4]"),
        "{se}"
    );
}

#[test]
fn garbage_and_truncated_npz_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "junk.npz", b"PK\x03\x04 definitely not a zip");
    let (_, se) = expect(&["run", "examples/mlp.kir", "--inputs", s(&p)], false);
    assert!(se.contains("not a valid .npz"), "{se}");
    let good = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mlp_inputs.npz"))
        .unwrap();
    for cut in [1, good.len() / 3, good.len() - 3] {
        let p = write(dir.path(), "cut.npz", &good[..cut]);
        expect(&["run", "examples/mlp.kir", "--inputs", s(&p)], false);
    }
}

#[test]
fn check_reports_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "types.kir",
        b"func @f {\n  %x = param {name=\"x\"} : f32[2]\n  %y = exp %x : f32[3]\n  %z = add %x, %y : f32[2]\n  return %z\n}\n",
    );
    let (_, se) = expect(&["check", s(&p)], false);
    assert!(
        se.contains(
            "types.kir:3:8: error: %1 (exp): is declared f32[3] but the op produces f32[2]"
        ),
        "{se}"
    );
    assert!(
        se.contains("types.kir:4:8: error: %2 (add): operand 1 has type f32[3]"),
        "{se}"
    );
    let p = write(
        dir.path(),
        "syntax.kir",
        b"func @f {\n  %x = frob : f32[2]\n",
    );
    let (_, se) = expect(&["check", s(&p)], false);
    assert!(
        se.contains("syntax.kir:2:8: error: unknown op `frob`"),
        "{se}"
    );
    let (so, _) = expect(&["check", "examples/mlp.kir"], true);
    assert!(so.contains("examples/mlp.kir: ok (1 functions)"), "{so}");
}

#[test]
fn truncated_kir_is_an_error_at_every_cut() {
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mlp.kir"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cuts: Vec<usize> = (1..full.len()).step_by(full.len() / 13).collect();
    for cut in cuts {
        let cut = (0..=cut).rev().find(|&c| full.is_char_boundary(c)).unwrap();
        let p = write(dir.path(), "cut.kir", &full.as_bytes()[..cut]);
        let (_, se) = expect(&["check", s(&p)], false);
        assert!(se.contains("cut.kir:"), "{se}");
    }
}

#[test]
fn fmt_prints_checks_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "messy.kir",
        b"; a comment\nfunc @f {\n  %in = param {name=\"x\"} : f32[seq*2]\n  %out = neg %in : f32[2*seq]\n  return %out\n}\n",
    );
    let (so, _) = expect(&["fmt", s(&p)], true);
    assert_eq!(so, "func @f {\n  %0 = param {name=\"x\"} : f32[2*seq]\n  %1 = neg %0 : f32[2*seq]\n  return %1\n}\n");
    let (_, se) = expect(&["fmt", "--check", s(&p)], false);
    assert!(se.contains("is not formatted"), "{se}");
    expect(&["fmt", "-w", s(&p)], true);
    expect(&["fmt", "--check", s(&p)], true);
    expect(&["fmt", "--check", "examples/mlp.kir"], true);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = kiln(&["run", "examples/mlp.kir", "--dim", "batch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected NAME=VALUE"));
    let (_, se) = expect(&["run", "nope.kir"], false);
    assert!(se.contains("cannot read nope.kir"), "{se}");
    let (_, se) = expect(
        &[
            "run",
            "examples/mlp.kir",
            "--func",
            "other",
            "--random-inputs",
        ],
        false,
    );
    assert!(se.contains("has no function @other; it has @mlp"), "{se}");
}

#[test]
fn ops_lists_the_table() {
    let (so, _) = expect(&["ops"], true);
    assert_eq!(so.lines().count(), kiln::Op::MNEMONICS.len());
    assert!(so.contains("reduce_window"));
}

#[test]
fn shipped_onnx_example_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npz");
    let (so, _) = expect(
        &[
            "run",
            "examples/classifier.onnx",
            "--inputs",
            "examples/classifier_inputs.npz",
            "-o",
            s(&out),
        ],
        true,
    );
    assert!(
        so.contains("probs: f32[4, 10]") && so.contains("label: i64[4]"),
        "{so}"
    );
    let got = npz::read_npz(&std::fs::read(&out).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let want =
        npz::read_npz(&std::fs::read(root.join("examples/classifier_expected.npz")).unwrap())
            .unwrap();
    for (name, w) in &want {
        let (_, g) = got.iter().find(|(n, _)| n == name).expect("output present");
        assert_eq!(
            kiln::onnx::mismatch(g, w, Default::default()),
            None,
            "{name}"
        );
    }
    let (so, _) = expect(&["inspect", "examples/classifier.onnx"], true);
    assert!(
        so.contains("image: f32[batch, 3, 16, 16]") && so.contains("probs: f32[batch, 10]"),
        "{so}"
    );
}

#[test]
fn opt_prints_the_optimized_ir_and_reports_passes() {
    let dir = tempfile::tempdir().unwrap();
    let src = b"func @main {\n  %x = param {name=\"x\"} : f32[n, 3]\n  %t = transpose %x {perm=[1, 0]} : f32[3, n]\n  %u = transpose %t {perm=[1, 0]} : f32[n, 3]\n  %e = exp %u : f32[n, 3]\n  %f = exp %u : f32[n, 3]\n  %y = add %e, %f : f32[n, 3]\n  return %y\n}\n";
    let f = write(dir.path(), "m.kir", src);
    let (so, se) = expect(&["opt", s(&f), "--time-passes", "--print-after-all"], true);
    assert_eq!(
        so,
        "func @main {\n  %0 = param {name=\"x\"} : f32[n, 3]\n  %1 = fused %0 {kind=\"elementwise\"} : f32[n, 3] {\n    %0 = param {name=\"in0\"} : f32[n, 3]\n    %1 = exp %0 : f32[n, 3]\n    %2 = add %1, %1 : f32[n, 3]\n    return %2\n  }\n  return %1\n}\n"
    );
    for p in kiln::passes::PIPELINE {
        assert!(se.contains(&format!("; after {p}\n")), "{se}");
    }
    assert!(se.contains("@main: total"), "{se}");
    // Chosen passes and kernel stages: a graph pass, the kernel as lowered, one transform.
    let (_, se) = expect(
        &[
            "opt",
            s(&f),
            "--kernels",
            "--print-after",
            "fuse,lower,shrink-scratch",
        ],
        true,
    );
    assert!(se.contains("; after fuse\n"), "{se}");
    assert!(
        se.contains("; after lower (@main, fused)\nkernel @k0("),
        "{se}"
    );
    assert!(se.contains("; after shrink-scratch (@main, fused)"), "{se}");
    assert!(
        !se.contains("; after fuse-loops") && !se.contains("; after cse"),
        "{se}"
    );
    let (_, se) = expect(&["opt", s(&f), "--print-after", "frob"], false);
    assert!(
        se.contains("no pass or kernel transform is called `frob`"),
        "{se}"
    );
    let (_, se) = expect(&["opt", s(&f), "--print-after", "fuse-loops"], false);
    assert!(se.contains("shown with --kernels"), "{se}");
    // A chosen list, with a specialization; the result is valid .kir that runs.
    let out = dir.path().join("o.kir");
    expect(
        &[
            "opt",
            s(&f),
            "--passes",
            "shapes,canonicalize",
            "--dim",
            "n=2",
            "-o",
            s(&out),
        ],
        true,
    );
    let o = std::fs::read_to_string(&out).unwrap();
    assert!(o.contains("param {name=\"x\"} : f32[2, 3]"), "{o}");
    expect(&["run", s(&out), "--random-inputs"], true);
    // Unknown passes and invalid input are errors, not panics.
    let (_, se) = expect(&["opt", s(&f), "--passes", "fold,nope"], false);
    assert!(
        se.contains("unknown pass `nope` (passes: shapes, fold,"),
        "{se}"
    );
    let bad = write(dir.path(), "bad.kir", b"func @main {\n  %x = param {name=\"x\"} : f32[2]\n  %y = exp %x : f32[3]\n  return %y\n}\n");
    let (_, se) = expect(&["opt", s(&bad)], false);
    assert!(se.contains("bad.kir:3:8: error:"), "{se}");
    let (so, _) = expect(&["passes"], true);
    assert!(
        so.contains("canonicalize") && so.contains("pipeline: "),
        "{so}"
    );
}

#[test]
fn graph_draws_kernels_as_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let src = b"func @main {\n  %x = param {name=\"x\"} : f32[4]\n  %e = exp %x : f32[4]\n  %y = tanh %e : f32[4]\n  return %y\n}\n";
    let f = write(dir.path(), "m.kir", src);
    let dot = dir.path().join("g.dot");
    expect(&["graph", s(&f), "-o", s(&dot)], true);
    let picture = std::fs::read_to_string(&dot).unwrap();
    assert!(
        picture.starts_with("digraph \"main\" {") && picture.contains("exp\\nf32[4]"),
        "{picture}"
    );
    assert!(!picture.contains("cluster"), "{picture}");
    expect(&["graph", s(&f), "--after", "all", "-o", s(&dot)], true);
    let picture = std::fs::read_to_string(&dot).unwrap();
    assert!(
        picture.contains("subgraph cluster_n1 {")
            && picture.contains("label=\"elementwise : f32[4]\""),
        "{picture}"
    );
    let (_, se) = expect(&["graph", s(&f), "--after", "nope", "-o", s(&dot)], false);
    assert!(se.contains("`nope` is not in the pipeline"), "{se}");
    let (_, se) = expect(&["graph", s(&f), "-o", "x.png"], false);
    assert!(se.contains("must be a .dot or .svg file"), "{se}");
    // SVG goes through Graphviz when it is installed, and says what is missing when not.
    let svg = dir.path().join("g.svg");
    let out = kiln(&["graph", s(&f), "-o", s(&svg)]);
    if out.status.success() {
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    } else {
        assert!(text(&out.stderr).contains("apt-get install graphviz"));
    }
}

#[test]
fn compiled_artifacts_run_like_the_model_and_damaged_ones_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("classifier.kiln");
    let (_, se) = expect(
        &["compile", "examples/classifier.onnx", "-o", s(&art)],
        true,
    );
    assert!(se.contains("wrote"), "{se}");
    let bytes = std::fs::read(&art).unwrap();
    // Compiling again gives the same bytes.
    let again = dir.path().join("again.kiln");
    expect(
        &["compile", "examples/classifier.onnx", "-o", s(&again)],
        true,
    );
    assert_eq!(bytes, std::fs::read(&again).unwrap());
    let run = |model: &str, more: &[&str]| {
        let mut args = vec![
            "run",
            model,
            "--inputs",
            "examples/classifier_inputs.npz",
            "--full",
        ];
        args.extend(more);
        expect(&args, true).0
    };
    // Artifacts are symbolic: they compute exactly what the JIT's symbolic executable does
    // (kernels compiled for the inputs' shapes may round differently).
    assert_eq!(
        run(s(&art), &[]),
        run("examples/classifier.onnx", &["--symbolic"])
    );
    // Truncated and bit-flipped artifacts: clear errors naming the file.
    for (name, bad) in [
        ("cut.kiln", bytes[..bytes.len() / 3].to_vec()),
        ("flip.kiln", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x10;
            b
        }),
    ] {
        let p = write(dir.path(), name, &bad);
        let (_, se) = expect(
            &["run", s(&p), "--inputs", "examples/classifier_inputs.npz"],
            false,
        );
        assert!(se.contains(name) && se.contains("artifact"), "{se}");
    }
    let (_, se) = expect(&["run", s(&art), "--interp"], false);
    assert!(se.contains("compiled artifact"), "{se}");
    // `inspect` tells what an artifact holds and needs.
    let (so, _) = expect(&["inspect", s(&art)], true);
    for needed in [
        "kiln artifact",
        "target: ",
        "needs: ",
        "plan",
        "image: f32[batch, 3, 16, 16]",
    ] {
        assert!(so.contains(needed), "inspect lacks {needed}:\n{so}");
    }
    let p = write(dir.path(), "cut2.kiln", &bytes[..100]);
    let (_, se) = expect(&["inspect", s(&p)], false);
    assert!(se.contains("cut2.kiln") && se.contains("truncated"), "{se}");
}

/// The value examples/c/main.c gives element `i` of a float input.
fn c_example_value(i: usize) -> f32 {
    ((i * 7 % 11) as f32 - 5.0) / 4.0
}

#[test]
fn the_c_example_runs_a_shared_library_from_kiln_compile() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libmlp.so");
    let (_, se) = expect(&["compile", "examples/mlp.kir", "-o", s(&lib)], true);
    assert!(se.contains("mlp.h"), "{se}");
    let header = std::fs::read_to_string(dir.path().join("mlp.h")).unwrap();
    for needed in [
        "#ifndef MLP_H",
        "mlp_model *mlp_create(void);",
        "int mlp_run(",
        "void mlp_destroy(mlp_model *model);",
        "const char *mlp_last_error(void);",
        "\"x\": f32[batch, 4]",
        "MLP_INPUT_NAMES[] = {\"x\", NULL};",
    ] {
        assert!(header.contains(needed), "model.h lacks {needed}:\n{header}");
    }
    // The system C compiler builds the example against the library alone.
    let app = build_c(dir.path(), "examples/c/main.c", &["mlp"], "app");
    // Run with an environment that has no Rust toolchain in reach.
    let ran = Command::new(&app)
        .arg("3")
        .env_clear()
        .output()
        .expect("run the C example");
    let (so, se) = (text(&ran.stdout), text(&ran.stderr));
    assert!(ran.status.success(), "stdout:\n{so}\nstderr:\n{se}");
    assert!(
        so.contains("without inputs: missing input \"x\""),
        "errors reach C as text:\n{so}"
    );
    let mut lines = so.lines().skip_while(|l| !l.starts_with("output "));
    assert_eq!(lines.next(), Some("output probs 2 [3, 3]"), "{so}");
    let got: Vec<f32> = lines.map(|l| l.parse().unwrap()).collect();
    // The same model compiled in this process, on the same inputs.
    let g = kiln::parse_graph(include_str!("../examples/mlp.kir")).unwrap();
    let g = kiln::optimize(&g, None, &Default::default()).unwrap();
    let exe = kiln::compile(&g, &Default::default()).unwrap();
    let x: Vec<f32> = (0..12).map(c_example_value).collect();
    let x = Tensor::new(vec![3, 4], kiln::Data::F32(x)).unwrap();
    let want = exe.run(&[x]).unwrap();
    let want = want[0].as_slice::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "C got {got:?}, Rust {want:?}");
    }
    // The library exports its C interface and nothing else of the runtime.
    if let Ok(nm) = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
    {
        let mut exported: Vec<String> = text(&nm.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
            .collect();
        exported.sort();
        assert_eq!(
            exported,
            ["mlp_create", "mlp_destroy", "mlp_last_error", "mlp_run"]
        );
    }
}

/// Builds a C program from `source` against the libraries `libs` in `dir`; returns its path.
fn build_c(dir: &Path, source: &str, libs: &[&str], exe: &str) -> PathBuf {
    let app = dir.join(exe);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-Wall", "-Werror", source, "-I"])
        .arg(dir)
        .arg("-L")
        .arg(dir)
        .args(libs.iter().map(|l| format!("-l{l}")))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&app)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(built.status.success(), "{}", text(&built.stderr));
    app
}

#[test]
fn two_model_libraries_link_into_one_program() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = dir.path().join("libmlp.so");
    expect(&["compile", "examples/mlp.kir", "-o", s(&mlp)], true);
    // --name overrides the file's name: the classifier's API is `classifier_*` although the
    // file is libcls.so (linked as -lcls).
    let cls = dir.path().join("libcls.so");
    expect(
        &[
            "compile",
            "examples/classifier.onnx",
            "-o",
            s(&cls),
            "--name",
            "classifier",
        ],
        true,
    );
    assert!(dir.path().join("classifier.h").is_file());
    let app = build_c(
        dir.path(),
        "examples/c/two_models.c",
        &["mlp", "cls"],
        "two",
    );
    let ran = Command::new(&app).env_clear().output().unwrap();
    let so = text(&ran.stdout);
    assert!(ran.status.success(), "{so}{}", text(&ran.stderr));
    // Each library runs its own model: the mlp's probabilities as Rust computes them, and
    // the classifier's label for a red picture (class 0).
    let g = kiln::parse_graph(include_str!("../examples/mlp.kir")).unwrap();
    let exe = kiln::compile(&g, &Default::default()).unwrap();
    let x = Tensor::new(vec![1, 4], kiln::Data::F32(vec![0.5, -1.0, 0.25, 2.0])).unwrap();
    let want = exe.run(&[x]).unwrap();
    let line = so.lines().find(|l| l.starts_with("mlp probs:")).expect(&so);
    let got: Vec<f32> = line[10..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let want = want[0].as_slice::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{so}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{so}");
    }
    assert!(so.contains("classifier label: 0"), "{so}");
    // Names that cannot prefix C symbols are refused before any work.
    let (_, se) = expect(
        &[
            "compile",
            "examples/mlp.kir",
            "-o",
            s(&mlp),
            "--name",
            "9lives",
        ],
        false,
    );
    assert!(se.contains("C identifier"), "{se}");
    let (_, se) = expect(
        &["compile", "examples/mlp.kir", "-o", "x.kiln", "--name", "m"],
        false,
    );
    assert!(se.contains("--emit so"), "{se}");
}

#[test]
fn compile_emits_objects_and_ir_and_knows_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("mlp.o");
    expect(&["compile", "examples/mlp.kir", "-o", s(&obj)], true);
    let bytes = std::fs::read(&obj).unwrap();
    assert!(bytes.starts_with(b"\x7fELF"), "not an object file");
    assert!(
        bytes.windows(13).any(|w| w == b"kiln_kernel_0"),
        "the object names its kernels"
    );
    let kir = dir.path().join("out.txt");
    expect(
        &[
            "compile",
            "examples/mlp.kir",
            "--emit",
            "kir",
            "-o",
            s(&kir),
        ],
        true,
    );
    let ir_text = std::fs::read_to_string(&kir).unwrap();
    kiln::parse_graph(&ir_text).expect("--emit kir writes the optimized graph as .kir");
    // A named x86-64 level: the artifact records what it needs and runs where that holds.
    let v2 = dir.path().join("v2.kiln");
    expect(
        &[
            "compile",
            "examples/mlp.kir",
            "--target",
            "x86-64-v2",
            "-o",
            s(&v2),
        ],
        true,
    );
    let host = dir.path().join("host.kiln");
    expect(&["compile", "examples/mlp.kir", "-o", s(&host)], true);
    let a = std::fs::read(&v2).unwrap();
    let features = |bytes: &[u8]| kiln::runtime::artifact::read(bytes).unwrap().features;
    assert!(features(&a).contains(&"sse4.2".to_string()));
    assert!(!features(&a).contains(&"avx2".to_string()));
    if std::arch::is_x86_feature_detected!("sse4.2") {
        let run = |m: &Path| expect(&["run", s(m), "--random-inputs", "--dim", "batch=2"], true).0;
        assert_eq!(run(&v2), run(&host));
    }
    // A library into a missing directory, or without a C compiler: clear errors.
    let (_, se) = expect(
        &["compile", "examples/mlp.kir", "-o", "/no/such/dir/libm.so"],
        false,
    );
    assert!(
        se.starts_with("error: ") && se.contains("/no/such/dir is not a directory"),
        "{se}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["compile", "examples/mlp.kir", "-o"])
        .arg(dir.path().join("libm.so"))
        .env("CC", "/no/such/cc")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let se = text(&out.stderr);
    assert!(
        !out.status.success() && se.contains("C compiler `/no/such/cc`"),
        "{se}"
    );
    let (_, se) = expect(
        &[
            "compile",
            "examples/mlp.kir",
            "--target",
            "pdp11",
            "-o",
            s(&v2),
        ],
        false,
    );
    assert!(
        se.contains("unknown target `pdp11`") && se.contains("x86-64-v3"),
        "{se}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    // A large output (a large batch, printed in full), of which the reader takes five bytes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            "examples/mlp.kir",
            "--random-inputs",
            "--dim",
            "batch=100000",
            "--full",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"probs");
    let out = child.wait_with_output().unwrap();
    let se = text(&out.stderr);
    assert!(!se.contains("panicked"), "{se}");
}

#[test]
fn run_reads_tensor_files_checks_expected_outputs_and_checks_its_output_first() {
    use kiln::frontends::onnx::proto::{data_type, TensorProto};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let classifier = [
        "run",
        "examples/classifier.onnx",
        "--inputs",
        "examples/classifier_inputs.npz",
        "--threads",
        "1",
    ];
    let mut args = classifier.to_vec();
    args.extend(["--expect", "examples/classifier_expected.npz"]);
    let (so, _) = expect(&args, true);
    assert!(
        so.contains("ok   probs") && so.contains("ok   label"),
        "{so}"
    );
    // A wrong expectation: a per-output report and a failure.
    let mut wrong =
        npz::read_npz(&std::fs::read("examples/classifier_expected.npz").unwrap()).unwrap();
    wrong.retain(|(n, _)| n == "label");
    let label = Tensor::from_vec(vec![4], vec![0i64, 1, 2, 3]).unwrap();
    wrong[0].1 = label;
    let p = write(dir.path(), "wrong.npz", &npz::write_npz(&wrong).unwrap());
    let mut args = classifier.to_vec();
    args.extend(["--expect", s(&p)]);
    let (so, se) = expect(&args, false);
    assert!(
        so.contains("FAIL label: element 1 is 5 instead of 1"),
        "{so}"
    );
    assert!(se.contains("1 of 1 expected outputs differ"), "{se}");
    // ONNX TensorProto files: named as they record, or by position.
    let x = |name: &str| TensorProto {
        name: name.into(),
        dims: vec![2, 4],
        data_type: data_type::FLOAT,
        float_data: vec![0.5; 8],
        ..Default::default()
    };
    let named = write(dir.path(), "input_0.pb", &x("x").encode_to_vec());
    let unnamed = write(dir.path(), "unnamed.pb", &x("").encode_to_vec());
    let (a, _) = expect(&["run", "examples/mlp.kir", "--inputs", s(&named)], true);
    let (b, _) = expect(&["run", "examples/mlp.kir", "--inputs", s(&unnamed)], true);
    // A folder of ONNX test data reads its input_N.pb files.
    let (c, _) = expect(
        &["run", "examples/mlp.kir", "--inputs", s(dir.path())],
        true,
    );
    assert!(a.contains("probs: f32[2, 3]"), "{a}");
    assert_eq!(a, b);
    assert_eq!(a, c);
    let (_, se) = expect(
        &[
            "run",
            "examples/mlp.kir",
            "--inputs",
            s(&named),
            "--inputs",
            s(&named),
        ],
        false,
    );
    assert!(se.contains("given twice"), "{se}");
    // An output that cannot be written fails before the model runs.
    let mut args = classifier.to_vec();
    args.extend(["-o", "/no/such/dir/out.npz"]);
    let (so, se) = expect(&args, false);
    assert!(so.is_empty() && se.contains("not a directory"), "{so}{se}");
}

#[test]
fn an_installed_kiln_builds_model_libraries_from_anywhere() {
    // The layout install.sh makes: PREFIX/bin/kiln and PREFIX/lib/libkiln_capi.a.
    let prefix = tempfile::tempdir().unwrap();
    let bin = prefix.path().join("bin");
    let lib = prefix.path().join("lib");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    let built = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let runtime = kiln::clib::runtime_library_near(built.parent().unwrap()).unwrap();
    std::fs::copy(built, bin.join("kiln")).unwrap();
    std::fs::copy(&runtime, lib.join("libkiln_capi.a")).unwrap();
    // From another directory, with the model copied there and no hint where the runtime is.
    let work = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("examples/mlp.kir"), work.path().join("mlp.kir")).unwrap();
    let compile = || {
        Command::new(bin.join("kiln"))
            .current_dir(work.path())
            .env_remove("KILN_CAPI_LIB")
            .args(["compile", "mlp.kir", "-o", "libmlp.so"])
            .output()
            .unwrap()
    };
    let out = compile();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(work.path().join("libmlp.so").is_file() && work.path().join("mlp.h").is_file());
    let app = build_c(work.path(), "examples/c/main.c", &["mlp"], "app");
    let ran = Command::new(&app).arg("2").env_clear().output().unwrap();
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    assert!(text(&ran.stdout).contains("output probs 2 [2, 3]"));
    // Without the runtime, the error says how to install it.
    std::fs::remove_file(lib.join("libkiln_capi.a")).unwrap();
    let out = compile();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("install.sh"),
        "{}",
        text(&out.stderr)
    );
}
