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
//!   file;
//! - `kernel`: the file holds kernel IR (`kernel @name(...) { ... }`), each kernel followed by
//!   its outputs on the kernel interpreter (`runtime::interp::kernels`), and every backend must
//!   compute the same — bit for bit, or within 2 ulp for floats in kernels with vector loops,
//!   as the kernel contract allows — which blessing cannot override. Comment lines right above a kernel may bind symbols
//!   (`; with n=9, m=2`; unbound ones are 7) and give inputs (`; in x = [1.5, nan, -inf]`);
//!   other inputs are deterministic random values. Each kernel must also print back as the
//!   text it parses from (up to layout) and parse to the same kernel.

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
            Ok(l) => {
                let text = l.kernel.to_string();
                let back = kiln::kernel::parse_kernel(&text)
                    .unwrap_or_else(|e| panic!("a lowered kernel does not parse: {e}\n{text}"));
                assert_eq!(
                    back.to_string(),
                    text,
                    "a lowered kernel prints back differently"
                );
                assert_eq!(
                    back.bufs, l.kernel.bufs,
                    "a lowered kernel's buffers change order"
                );
                text
            }
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

/// The `; with` bindings and `; in` inputs in the comment lines right above line `at`
/// (0-based).
fn directives(lines: &[&str], at: usize) -> Vec<String> {
    let mut start = at;
    while start > 0 && lines[start - 1].trim_start().starts_with(';') {
        start -= 1;
    }
    lines[start..at]
        .iter()
        .map(|l| l.trim_start().trim_start_matches(';').trim().to_string())
        .filter(|l| l.starts_with("with ") || l.starts_with("in "))
        .collect()
}

/// Parses `[1, -2.5, nan, inf, true]` as elements of `dtype`.
fn literal_data(text: &str, dtype: kiln::DType) -> Result<kiln::Data, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("`{text}` is not a [list]"))?;
    let items: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let bad = |t: &str| format!("`{t}` is not a {dtype}");
    Ok(match dtype {
        kiln::DType::Bool => kiln::Data::Bool(
            items
                .iter()
                .map(|t| match *t {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    t => Err(bad(t)),
                })
                .collect::<Result<_, _>>()?,
        ),
        d if d.is_float() => kiln::Data::from_f64s(
            d,
            &items
                .iter()
                .map(|t| t.parse::<f64>().map_err(|_| bad(t)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        d => kiln::Data::from_i128s(
            d,
            &items
                .iter()
                .map(|t| t.parse::<i128>().map_err(|_| bad(t)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    })
}

/// Units in the last place between two floats of `dtype` (0 for two NaNs).
fn ulps(a: f64, b: f64, dtype: kiln::DType) -> u64 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let key64 = |x: f64| {
        let b = x.to_bits() as i64;
        if b < 0 {
            i64::MIN - b
        } else {
            b
        }
    };
    let key32 = |x: f64| {
        let b = (x as f32).to_bits() as i32;
        i64::from(if b < 0 { i32::MIN - b } else { b })
    };
    match dtype {
        kiln::DType::F32 => key32(a).abs_diff(key32(b)),
        _ => key64(a).abs_diff(key64(b)),
    }
}

/// A kernel's outputs (or the code it stops with) on the kernel interpreter; every backend
/// must agree.
fn kernel_output(k: &kiln::kernel::Kernel, setup: &[String]) -> Result<Vec<String>, String> {
    use kiln::kernel::BufKind;
    // The text round-trips.
    let text = k.to_string();
    let again = kiln::kernel::parse_kernel(&text).map_err(|e| format!("reparsing: {e}\n{text}"))?;
    // (Text, not `==`: a NaN constant is not equal to itself.)
    if again.to_string() != text || again.bufs != k.bufs || again.vars != k.vars {
        return Err(format!("the printed kernel parses differently:\n{text}"));
    }
    let mut env: HashMap<String, i64> = HashMap::new();
    let mut given: HashMap<String, String> = HashMap::new();
    for d in setup {
        if let Some(b) = d.strip_prefix("with ") {
            for w in b.split([',', ' ']).filter(|w| !w.is_empty()) {
                let (n, v) = w
                    .split_once('=')
                    .ok_or(format!("`{w}` is not NAME=VALUE"))?;
                env.insert(n.into(), v.parse().map_err(|_| format!("`{v}` in `{w}`"))?);
            }
        } else if let Some(b) = d.strip_prefix("in ") {
            let (n, v) = b
                .split_once('=')
                .ok_or(format!("`{b}` is not NAME = [...]"))?;
            given.insert(n.trim().into(), v.trim().into());
        }
    }
    let eval = |d: &kiln::Dim| {
        d.eval(&|s| Some(env.get(s).copied().unwrap_or(7)))
            .map_err(|e| e.to_string())
    };
    let dims = k.dims.iter().map(eval).collect::<Result<Vec<_>, _>>()?;
    let mut rng = kiln::Rng::new(1);
    let mut bufs = Vec::new();
    for b in &k.bufs {
        let len = eval(&b.len)?.max(0) as usize;
        let data = match (b.kind, given.remove(&b.name)) {
            (_, Some(t)) => literal_data(&t, b.dtype)?,
            (BufKind::Input, None) => rng.tensor(b.dtype, &[len]).data().clone(),
            _ => kiln::Data::zeros(b.dtype, len),
        };
        if data.len() != len {
            return Err(format!(
                "`{}` has {len} elements, given {}",
                b.name,
                data.len()
            ));
        }
        bufs.push(data);
    }
    if let Some(n) = given.keys().next() {
        return Err(format!("no buffer `{n}`"));
    }
    let inputs = bufs.clone();
    let code = match kiln::interp::kernels::run(k, &mut bufs, &dims) {
        Ok(code) => code,
        Err(e) => return Ok(vec![format!("error: {e}")]),
    };
    let outputs: Vec<usize> = (0..k.bufs.len())
        .filter(|&i| k.bufs[i].kind == BufKind::Output)
        .collect();
    // Outside vector loops a backend computes exactly what the interpreter does; inside them
    // f32 transcendental functions may be 2 ulp off and f64 sums reassociate.
    let mut vector = false;
    for s in &k.body {
        s.walk(&mut |s| {
            vector |= matches!(
                s,
                kiln::kernel::Stmt::Loop {
                    mark: kiln::kernel::Mark::Vector(_),
                    ..
                }
            )
        });
    }
    let slack = if vector { 2 } else { 0 };
    for (name, backend) in [("cranelift", kiln::codegen::backend())] {
        let code_obj = backend
            .compile(std::slice::from_ref(k))
            .map_err(|e| format!("@{}: {name} cannot compile it: {e}\n{text}", k.name))?;
        let mut got = inputs.clone();
        let ptrs: Vec<*mut u8> = got
            .iter_mut()
            .map(|d| kiln::ir::with_data!(d, v, _W => v.as_mut_ptr().cast::<u8>()))
            .collect();
        // SAFETY: every buffer has its declared length under these dims, and the interpreter
        // ran the same kernel on them without an out-of-range access.
        let c = unsafe { code_obj.function(0)(ptrs.as_ptr(), dims.as_ptr()) };
        if c != code {
            return Err(format!(
                "@{}: {name} stops with code {c}, the interpreter with {code}",
                k.name
            ));
        }
        if code != 0 {
            continue;
        }
        for &i in &outputs {
            let (w, g, dtype) = (&bufs[i], &got[i], k.bufs[i].dtype);
            for j in 0..w.len() {
                let same = match dtype.is_float() {
                    true => ulps(w.get_f64(j), g.get_f64(j), dtype) <= slack,
                    false => w.get_i128(j) == g.get_i128(j),
                };
                if !same {
                    return Err(format!(
                        "@{}: {name} computes {}[{j}] = {}, the interpreter {}\n{text}",
                        k.name,
                        k.bufs[i].name,
                        g.get_f64(j),
                        w.get_f64(j)
                    ));
                }
            }
        }
    }
    if code != 0 {
        return Ok(vec![format!(
            "stops with code {code} ({})",
            kiln::kernel::codes::message(code)
        )]);
    }
    Ok(outputs
        .iter()
        .map(|&i| {
            // Long buffers show their first 16 elements (all are compared).
            let n = bufs[i].len();
            let shown = bufs[i].take_all(&(0..n.min(16)).collect::<Vec<_>>());
            let t = kiln::Tensor::new(vec![shown.len()], shown).expect("a vector");
            let more = if n > 16 {
                format!(" ... ({n} elements)")
            } else {
                String::new()
            };
            format!("{} = {}{more}", k.bufs[i].name, kiln::format::values(&t))
        })
        .collect())
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
        (_, "kernel") => {
            let parsed = kiln::kernel::parse_kernels(&body)
                .map_err(|e| format!("{}:{e}", path.display()))?;
            for p in &parsed {
                let after = p.span.end.line as usize;
                let (expected, end) = block_at(&lines, after);
                let setup = directives(&lines, p.span.start.line as usize - 1);
                let actual = kernel_output(&p.kernel, &setup)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), p.span.start.line))?;
                blocks.push((after, expected, actual, end));
            }
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
