//! Robustness: mutated `.kir` text (from random graphs and from the filetests) goes through the
//! parser, the verifier and, when it verifies, the interpreter; mutated kernel text (the
//! kernel filetests and lowered random graphs) through the kernel parser and the kernel
//! interpreter. Any outcome but a panic is fine. Run longer with `PROPTEST_CASES=200000 cargo test --release --test fuzz_kir`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use kiln::{interp, Graph, Op};
use proptest::prelude::*;

const TOKENS: &[&str] = &[
    "%0",
    "%99",
    "@w",
    "@\"q\"",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    "=",
    ":",
    "-",
    "*",
    "/",
    " mod ",
    "f32",
    "bool",
    "u64",
    "i8[",
    "add",
    "dot",
    "topk",
    "param",
    "constant",
    "func @h {",
    "return",
    "as",
    "\"s\"",
    "nan",
    "-inf",
    "1e400",
    "0",
    "-1",
    "9223372036854775807",
    "18446744073709551616",
    "99999999999999999999999",
    "n",
    "seq*seq*seq*seq",
    "\\u{0}",
    "\"",
    ";",
    "\n",
    "const @c : f32[2] = [1.0, 2.0]\n",
    "{value=@nope}",
    "{axes=[0, 0]}",
    "{k=-3, axis=0}",
    "{perm=[1, 1]}",
    "é",
    "\u{feff}",
    "v0",
    "v1",
    "v99",
    "for v7 in 0..",
    "{n}",
    "..",
    " vector(4)",
    " parallel",
    "check ",
    " else 1",
    "call ",
    "gemm",
    "row_max",
    "row_exp_sub",
    "call row_act(src: x[0], dst: y[0]; n=4 act=2)",
    "v3: f32 = call row_max(row: x[0]; n=4 init=v3)",
    "cast<f32>",
    "cast<i8>{saturate=false}",
    "<",
    ">",
    ", scratch t: f32[4]",
    "in0[",
    "out0[",
    "0.0:f32",
    "NaN:f64",
    "true",
    "b_packed: -",
];

/// The filetests as plain `.kir` text, read once.
fn corpus() -> &'static [String] {
    static CORPUS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(read_corpus)
}

fn read_corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                // Drop the `test` header so the text is plain .kir.
                out.push(text.lines().skip(1).collect::<Vec<_>>().join("\n"));
            }
        }
    }
    out.sort();
    out
}

fn mutate(text: &str, muts: &[(u8, u32, u32)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(kind, a, b) in muts {
        let n = chars.len().max(1);
        let (a, b) = (a as usize % n, b as usize % n);
        match kind % 6 {
            0 => {
                let end = (a + b % 16 + 1).min(chars.len());
                if a < end {
                    chars.drain(a..end);
                }
            }
            1 => {
                let tok = TOKENS[b % TOKENS.len()];
                let at = a.min(chars.len());
                chars.splice(at..at, tok.chars());
            }
            2 | 3 => {
                let s: String = chars.iter().collect();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let (i, j) = (a % lines.len(), b % lines.len());
                    if kind % 6 == 2 {
                        lines.insert(j, lines[i]);
                    } else {
                        lines.swap(i, j);
                    }
                }
                chars = lines.join("\n").chars().collect();
            }
            4 => {
                // Replace a digit with a run of them, often overflowing.
                if let Some(i) = (a..chars.len()).find(|&i| chars[i].is_ascii_digit()) {
                    let run = "9".repeat(b % 25 + 1);
                    chars.splice(i..i + 1, run.chars());
                }
            }
            _ => {
                if a < chars.len() {
                    const SET: &[u8] = b" %@{}[](),=:-*/;\"\\0123456789abcxyz";
                    chars[a] = char::from(SET[b % SET.len()]);
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// Runs a verified graph on small random inputs; errors are fine, panics are not.
fn try_run(g: &Graph) {
    let Ok(v) = kiln::verify(g) else { return };
    let mut bindings = HashMap::new();
    for (_, ty) in kiln::params(g) {
        for d in ty.shape.dims() {
            for s in d.symbols() {
                bindings.insert(s.to_string(), 2);
            }
        }
    }
    let small = kiln::params(g).iter().all(|(_, ty)| {
        ty.shape.eval(&|s| bindings.get(s).copied()).is_ok_and(|d| {
            d.iter().all(|&x| (0..64).contains(&x)) && d.iter().product::<i64>() <= 4096
        })
    });
    // Keep each case cheap: small constants, small results.
    let small_consts = g.node_ids().iter().all(|&id| match g.node(id).op() {
        Op::Constant { value } => value.tensor.numel() <= 4096,
        _ => true,
    });
    if !small || !small_consts {
        return;
    }
    let Ok(random) = kiln::random_inputs(g, &bindings, 1) else {
        return;
    };
    let inputs: Vec<_> = random.inputs.into_iter().map(|(_, t)| t).collect();
    let opts = interp::Options {
        bindings,
        max_tensor_bytes: 1 << 16,
    };
    let _ = interp::run_with(&v, &inputs, &opts);
}

fn check(text: &str) {
    if let Ok(m) = kiln::parse_module(text) {
        for f in &m.funcs {
            let printed = kiln::print_graph(&f.graph);
            // Whatever parses must print to text that parses to the same graph.
            let back = kiln::parse_graph(&printed).expect("printed text parses");
            assert!(back == f.graph, "reprint changed the graph:\n{printed}");
            for id in f.graph.node_ids() {
                let _ = Op::doc_of(f.graph.node(id).op().mnemonic());
            }
            try_run(&f.graph);
        }
    }
}

/// The kernel filetests' text, and the kernels lowering makes of random graphs.
fn kernel_corpus() -> &'static [String] {
    static CORPUS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut out: Vec<String> = corpus()
            .iter()
            .filter(|t| t.lines().any(|l| l.starts_with("kernel @")))
            .cloned()
            .collect();
        for seed in 0..40 {
            let g = common::random_graph(seed, 12);
            for id in g.topo_order().unwrap_or_default() {
                let sub = kiln::kernel::single_node_graph(&g, id);
                if let Ok(l) = kiln::codegen::lower(&sub, "k") {
                    out.push(l.kernel.to_string());
                }
            }
        }
        out
    })
}

/// Parses kernel text; whatever parses prints back to the same kernel and runs on the kernel
/// interpreter (small dims) without panicking.
fn check_kernels(text: &str) {
    let Ok(parsed) = kiln::kernel::parse_kernels(text) else {
        return;
    };
    for p in parsed {
        let k = p.kernel;
        let printed = k.to_string();
        let back = kiln::kernel::parse_kernel(&printed).expect("a printed kernel parses");
        // (Text and structure, not `==`: a NaN constant is not equal to itself.)
        assert!(
            back.to_string() == printed && back.bufs == k.bufs && back.vars == k.vars,
            "reprint changed the kernel:\n{printed}"
        );
        let eval = |d: &kiln::Dim| d.eval(&|_| Some(3)).ok();
        let Some(dims) = k.dims.iter().map(eval).collect::<Option<Vec<i64>>>() else {
            continue;
        };
        let lens: Option<Vec<usize>> = k
            .bufs
            .iter()
            .map(|b| {
                eval(&b.len)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= 4096)
            })
            .collect();
        let Some(lens) = lens else { continue };
        // Routine calls run host code on the buffers as given: only the interpreter's own
        // statements are fuzzed.
        // So is every loop whose extent is not known before it runs (the work bound below
        // would not hold).
        let mut calls = false;
        for s in &k.body {
            s.walk(&mut |s| {
                calls |= match s {
                    kiln::kernel::Stmt::Call(_) => true,
                    kiln::kernel::Stmt::Loop { extent, .. } => {
                        kiln::kernel::stages::eval(extent, &dims).is_none()
                    }
                    _ => false,
                }
            });
        }
        let work = kiln::kernel::stages::cost(&k.body, &dims);
        if calls || dims.iter().any(|&d| !(0..=64).contains(&d)) || work.is_nan() || work > 1e5 {
            continue;
        }
        let mut bufs: Vec<kiln::Data> = k
            .bufs
            .iter()
            .zip(&lens)
            .map(|(b, &n)| kiln::Data::zeros(b.dtype, n))
            .collect();
        let _ = kiln::interp::kernels::run(&k, &mut bufs, &dims);
    }
}

/// The fuzzed kernel texts parse before they are mutated (so mutations start from real text).
#[test]
fn the_kernel_corpus_parses() {
    let corpus = kernel_corpus();
    assert!(corpus.len() > 40, "{} kernel texts", corpus.len());
    let kernels: usize = corpus
        .iter()
        .map(|t| match kiln::kernel::parse_kernels(t) {
            Ok(ks) => ks.len(),
            Err(e) => panic!("{e}\n{t}"),
        })
        .sum();
    assert!(kernels > 60, "{kernels} kernels");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(500)))]

    #[test]
    fn mutated_kernel_text_never_panics(
        pick in any::<usize>(),
        muts in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..6),
    ) {
        let corpus = kernel_corpus();
        prop_assume!(!corpus.is_empty());
        check_kernels(&mutate(&corpus[pick % corpus.len()], &muts));
    }

    #[test]
    fn mutated_random_graphs_never_panic(
        seed in any::<u64>(),
        size in 1usize..30,
        muts in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..6),
    ) {
        let text = kiln::print_graph(&common::random_graph(seed, size));
        check(&mutate(&text, &muts));
    }

    #[test]
    fn mutated_filetests_never_panic(
        pick in any::<usize>(),
        muts in prop::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..6),
    ) {
        let corpus = corpus();
        prop_assume!(!corpus.is_empty());
        check(&mutate(&corpus[pick % corpus.len()], &muts));
    }

    #[test]
    fn random_graphs_run_without_panicking(seed in any::<u64>(), size in 1usize..30) {
        try_run(&common::random_graph(seed, size));
    }
}
