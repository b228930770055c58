//! The filetest runner: every `.kir` file under `tests/filetests` starts with a header
//! `test <command>` and holds functions, each followed by its expected output as `; ` comment
//! lines. A mismatch prints a unified diff; `KILN_BLESS=1 cargo test --test filetests` rewrites
//! the expected blocks in place.
//!
//! Commands:
//! - `parse`: the function printed in canonical form;
//! - `verify`: `ok` or every verifier error;
//! - `run`: the outputs on the reference interpreter (parameters get deterministic random
//!   inputs, with every symbol bound to 2), or the runtime error; compiled code must agree
//!   (which blessing cannot override);
//! - `pass a,b`: the function after those passes; `optimize`: after the default pipeline.
//!   Either way the result must compute what the original does on random inputs (symbols
//!   bound to 2 and to 3), which blessing cannot override;
//! - `lower`: the kernel IR of every node that computes something (fused kernels and single
//!   ops), or why it cannot be lowered;
//! - `parse-error`: the file does not parse; the expected error is the `; ` block that ends the
//!   file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use similar::TextDiff;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "kir") {
            out.push(p);
        }
    }
}

/// The expected block starting at line `from` (0-based): consecutive `;` lines.
fn block_at(lines: &[&str], from: usize) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut i = from;
    while i < lines.len() && lines[i].trim_start().starts_with(';') {
        let l = lines[i].trim_start().trim_start_matches(';');
        out.push(l.strip_prefix(' ').unwrap_or(l).to_string());
        i += 1;
    }
    (out, i)
}

fn format_block(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            if l.is_empty() {
                ";".to_string()
            } else {
                format!("; {l}")
            }
        })
        .collect()
}

/// The output of `cmd` on `g`; an error is a failure that blessing cannot accept (an optimized
/// graph that computes something else).
fn actual_output(cmd: &str, g: &kiln::Graph) -> Result<Vec<String>, String> {
    let text = match cmd {
        "parse" => kiln::print_graph(g),
        "verify" => match kiln::verify(g) {
            Ok(_) => "ok".to_string(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        },
        "run" => run(g)?,
        "optimize" => optimized(g, None, &HashMap::new())?,
        "lower" => lowered(g),
        _ => match cmd.strip_prefix("pass ") {
            Some(rest) => {
                // `pass a,b NAME=VALUE...`: passes, then symbol bindings for `shapes`.
                let mut words = rest.split_whitespace();
                let list = words.next().unwrap_or_default();
                let bindings = words
                    .map(|w| {
                        let (n, v) = w.split_once('=').expect("a binding NAME=VALUE");
                        (n.to_string(), v.parse().expect("an integer binding"))
                    })
                    .collect();
                optimized(g, Some(list), &bindings)?
            }
            None => panic!("unknown filetest command `{cmd}`"),
        },
    };
    Ok(text.lines().map(str::to_string).collect())
}

/// The kernel of every computing node, in order.
fn lowered(g: &kiln::Graph) -> String {
    let mut out = Vec::new();
    for id in g.topo_order().expect("acyclic") {
        let op = g.node(id).op();
        if matches!(op, kiln::Op::Param { .. } | kiln::Op::Constant { .. }) {
            continue;
        }
        let name = format!("k{}", out.len());
        let sub = kiln::kernel::single_node_graph(g, id);
        out.push(match kiln::codegen::lower(&sub, &name) {
            Ok(l) => l.kernel.to_string(),
            Err(e) => format!("{name}: unsupported: {e}"),
        });
    }
    out.join("\n")
}

/// The graph after the passes (the default pipeline for `None`), checked to compute what the
/// original computes on random inputs.
fn optimized(
    g: &kiln::Graph,
    passes: Option<&str>,
    bindings: &HashMap<String, i64>,
) -> Result<String, String> {
    let o = match kiln::optimize(g, passes, bindings) {
        Ok(o) => o,
        Err(e) => return Ok(format!("error: {e}")),
    };
    same_semantics(g, &o, bindings).map_err(|e| format!("@{}: {e}", g.name()))?;
    Ok(kiln::print_graph(&o))
}

/// Runs both graphs on the same random inputs (symbols bound to 2, then 3, unless `fixed`
/// binds them) and compares.
fn same_semantics(
    a: &kiln::Graph,
    b: &kiln::Graph,
    fixed: &HashMap<String, i64>,
) -> Result<(), String> {
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
    };
    for (size, seed) in [(2, 0), (3, 1)] {
        let mut bindings = HashMap::new();
        for (_, ty) in kiln::params(a) {
            for d in ty.shape.dims() {
                for s in d.symbols() {
                    let v = fixed.get(&*s).copied().unwrap_or(size);
                    bindings.insert(s.to_string(), v);
                }
            }
        }
        let Ok(r) = kiln::random_inputs(a, &bindings, seed) else {
            return Ok(());
        };
        let want = kiln::interpret(a, &r.inputs, &HashMap::new());
        let got = kiln::interpret(b, &r.inputs, &HashMap::new());
        match (want, got) {
            (Ok(want), Ok(got)) => {
                for ((name, w), (_, g)) in want.iter().zip(&got) {
                    if let Some(m) = kiln::onnx::mismatch(g, w, tol) {
                        return Err(format!("the optimized graph changes output {name}: {m}"));
                    }
                }
            }
            (Err(_), Err(_)) => {}
            (Ok(_), Err(e)) => return Err(format!("the optimized graph fails: {e}")),
            (Err(e), Ok(_)) => {
                return Err(format!(
                    "the original fails ({e}) but the optimized graph runs"
                ))
            }
        }
    }
    Ok(())
}

fn run(g: &kiln::Graph) -> Result<String, String> {
    let mut bindings = HashMap::new();
    for (_, ty) in kiln::params(g) {
        for d in ty.shape.dims() {
            for s in d.symbols() {
                bindings.insert(s.to_string(), 2);
            }
        }
    }
    let inputs = match kiln::random_inputs(g, &bindings, 0) {
        Ok(r) => r.inputs,
        Err(e) => return Ok(format!("error: {e}")),
    };
    let want = kiln::interpret(g, &inputs, &HashMap::new());
    // Compiled code (each node alone) must agree with the interpreter.
    let exe = kiln::executable(g, &Default::default())
        .map_err(|e| format!("@{}: compiling: {e}", g.name()))?;
    let got = kiln::execute(&exe, &inputs, &HashMap::new());
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-5,
        atol: 1e-6,
    };
    match (&want, got) {
        (Ok(want), Ok(got)) => {
            for ((name, w), (_, x)) in want.iter().zip(&got) {
                if let Some(m) = kiln::onnx::mismatch(x, w, tol) {
                    return Err(format!(
                        "@{}: compiled code differs on {name}: {m}\n{}",
                        g.name(),
                        exe.kernels_text()
                    ));
                }
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => return Err(format!("@{}: compiled code fails: {e}", g.name())),
        (Err(e), Ok(_)) => {
            return Err(format!(
                "@{}: the interpreter fails ({e}) but compiled code runs",
                g.name()
            ))
        }
    }
    Ok(match want {
        Ok(outs) => outs
            .iter()
            .map(|(n, t)| format!("{n}: {} = {}", t.ty(), kiln::format::values(t)))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("error: {e}"),
    })
}

/// Which ops each command's filetests exercise, for the coverage check.
type Coverage = HashMap<String, std::collections::BTreeSet<&'static str>>;

/// Checks one file; returns its diff on mismatch (after blessing, when asked).
fn check_file(path: &Path, bless: bool, cover: &mut Coverage) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .ok_or("empty filetest")?;
    let cmd = lines[header]
        .trim()
        .strip_prefix("test ")
        .ok_or_else(|| format!("{}: first line must be `test <command>`", path.display()))?
        .trim();
    // Keep line numbers stable for diagnostics: blank the header instead of removing it.
    let body: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == header { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    // (line index after which the block goes, expected, actual, end of the old block)
    let mut blocks: Vec<(usize, Vec<String>, Vec<String>, usize)> = Vec::new();
    match (kiln::parse_module(&body), cmd) {
        (Err(e), "parse-error") => {
            let mut start = lines.len();
            while start > 0 && lines[start - 1].trim_start().starts_with(';') {
                start -= 1;
            }
            let (expected, end) = block_at(&lines, start);
            blocks.push((start, expected, vec![e.to_string()], end));
        }
        (Ok(_), "parse-error") => return Err(format!("{}: parsed without error", path.display())),
        (Err(e), _) => return Err(format!("{}: {e}", path.display())),
        (Ok(m), _) => {
            let seen = cover.entry(cmd.to_string()).or_default();
            for g in m.graphs() {
                seen.extend(g.node_ids().iter().map(|&id| g.node(id).op().mnemonic()));
            }
            // Every valid function of every filetest also goes through the default pipeline,
            // which must not change what it computes.
            if matches!(cmd, "parse" | "run" | "verify") {
                for g in m.graphs().filter(|g| kiln::verify(g).is_ok()) {
                    let o = kiln::optimize(g, None, &HashMap::new())
                        .map_err(|e| format!("{}: @{}: {e}", path.display(), g.name()))?;
                    same_semantics(g, &o, &HashMap::new())
                        .map_err(|e| format!("{}: @{}: {e}", path.display(), g.name()))?;
                }
            }
            for f in &m.funcs {
                let after = f.span.end.line as usize;
                let (expected, end) = block_at(&lines, after);
                let actual =
                    actual_output(cmd, &f.graph).map_err(|e| format!("{}: {e}", path.display()))?;
                blocks.push((after, expected, actual, end));
            }
        }
    }
    let count = blocks.len();
    if blocks.iter().all(|(_, e, a, _)| e == a) {
        return Ok(count);
    }
    if bless {
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        for (at, _, actual, end) in &blocks {
            out.extend(lines[i..*at].iter().map(|l| l.to_string()));
            out.extend(format_block(actual));
            i = *end;
        }
        out.extend(lines[i..].iter().map(|l| l.to_string()));
        std::fs::write(path, out.join("\n") + "\n").map_err(|e| e.to_string())?;
        // Expected output may mention line numbers that the rewrite just moved: check again.
        return check_file(path, bless, cover);
    }
    let mut report = String::new();
    for (at, expected, actual, _) in blocks.iter().filter(|(_, e, a, _)| e != a) {
        let (e, a) = (expected.join("\n") + "\n", actual.join("\n") + "\n");
        let diff = TextDiff::from_lines(&e, &a);
        report.push_str(&format!(
            "{}:{}:\n{}",
            path.display(),
            at + 1,
            diff.unified_diff().header("expected", "actual")
        ));
    }
    Err(report)
}

#[test]
fn filetests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let bless = std::env::var("KILN_BLESS").is_ok_and(|v| v == "1");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut cover = Coverage::new();
    for f in &files {
        match check_file(f, bless, &mut cover) {
            Ok(n) => cases += n,
            Err(report) => failures.push(report),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed (KILN_BLESS=1 accepts the new output):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    // Every op is printed and parsed by some `parse` filetest and run by some `run` filetest.
    for cmd in ["parse", "run"] {
        let seen = cover.get(cmd).cloned().unwrap_or_default();
        let missing: Vec<&str> = kiln::Op::MNEMONICS
            .iter()
            .copied()
            .filter(|m| !(seen.contains(m) || (cmd == "run" && *m == "param")))
            .collect();
        assert!(missing.is_empty(), "no `{cmd}` filetest uses {missing:?}");
    }
    assert!(
        files.len() >= 30,
        "expected at least 30 filetests, found {}",
        files.len()
    );
    eprintln!("{} filetests, {cases} cases", files.len());
}
