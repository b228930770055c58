//! The filetest runner: every `.kir` file under `tests/filetests` starts with a header
//! `test <command>` and holds functions, each followed by its expected output as `; ` comment
//! lines. A mismatch prints a unified diff; `KILN_BLESS=1 cargo test --test filetests` rewrites
//! the expected blocks in place.
//!
//! Commands:
//! - `parse`: the function printed in canonical form;
//! - `verify`: `ok` or every verifier error;
//! - `run`: the outputs on the reference interpreter (parameters get deterministic random
//!   inputs, with every symbol bound to 2), or the runtime error;
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

fn actual_output(cmd: &str, g: &kiln::Graph) -> Vec<String> {
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
        "run" => run(g),
        other => panic!("unknown filetest command `{other}`"),
    };
    text.lines().map(str::to_string).collect()
}

fn run(g: &kiln::Graph) -> String {
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
        Err(e) => return format!("error: {e}"),
    };
    match kiln::interpret(g, &inputs, &HashMap::new()) {
        Ok(outs) => outs
            .iter()
            .map(|(n, t)| format!("{n}: {} = {}", t.ty(), kiln::format::values(t)))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("error: {e}"),
    }
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
            for f in &m.funcs {
                let after = f.span.end.line as usize;
                let (expected, end) = block_at(&lines, after);
                blocks.push((after, expected, actual_output(cmd, &f.graph), end));
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
    assert!(
        files.len() >= 30,
        "expected at least 30 filetests, found {}",
        files.len()
    );
    eprintln!("{} filetests, {cases} cases", files.len());
}
