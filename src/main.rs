//! The `kiln` command-line interface: a thin layer over the library that owns the files,
//! prints diagnostics as `file:line:col: error: ...` and sets the exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::{format, npz, Graph, Tensor};

#[path = "cli/load.rs"]
mod load;
use load::{parse_kir, read, Kind, Loaded, ModelArgs};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "An optimizing compiler for machine-learning models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse and verify .kir files, reporting every error with its location
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a .kir file in canonical form (comments are not kept)
    Fmt {
        file: PathBuf,
        /// Exit with an error if the file is not already formatted
        #[arg(long)]
        check: bool,
        /// Rewrite the file in place
        #[arg(short, long, conflicts_with = "check")]
        write: bool,
    },
    /// Compile and run a model (or interpret it with --interp), or run a compiled .kiln
    /// artifact; print and optionally save outputs
    Run(RunArgs),
    /// Compile a model (.onnx or .kir) ahead of time into a .kiln artifact that runs without
    /// the compiler (`kiln run model.kiln`)
    Compile(CompileArgs),
    /// Run the ONNX backend node tests in DIR on kiln and report pass counts per op
    Conformance(ConformanceArgs),
    /// Summarize an ONNX model (opsets, inputs and outputs, parameters, op histogram) or a
    /// .kiln artifact (versions, target and CPU features, sections, inputs and outputs, kernels)
    Inspect { file: PathBuf },
    /// Optimize a model (.kir or .onnx) and print the resulting IR
    Opt(OptArgs),
    /// List the optimizer's passes and the default pipeline
    Passes,
    /// Draw a model's graph (kernels as clusters) as Graphviz .dot, or .svg through `dot`
    Graph(GraphArgs),
    /// List the ops of the IR with their documentation
    Ops,
    /// Compile a model and measure it: compile time, latency median and p90, peak memory
    Bench(BenchArgs),
}

/// A failure already described to the user (or to be described by `main`).
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

fn read_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read(path)?)
        .map_err(|_| Failure(format!("{} is not UTF-8 text", path.display())))
}

fn verify_diagnostics(path: &Path, g: &Graph) -> Vec<String> {
    match kiln::verify(g) {
        Ok(_) => vec![],
        Err(errs) => errs
            .errors
            .iter()
            .map(|e| {
                let at = e.origin.loc.map_or(String::new(), |l| format!("{l}:"));
                let node = e.node.as_ref().map_or(String::new(), |n| format!("{n}: "));
                format!("{}:{at} error: {node}{}", path.display(), e.message)
            })
            .collect(),
    }
}

fn check(files: &[PathBuf]) -> Result<(), Failure> {
    let mut failed = 0;
    for path in files {
        let m = match parse_kir(path) {
            Ok(m) => m,
            Err(Failure(msg)) => {
                eprintln!("{msg}");
                failed += 1;
                continue;
            }
        };
        let diags: Vec<String> = m
            .graphs()
            .flat_map(|g| verify_diagnostics(path, g))
            .collect();
        for d in &diags {
            eprintln!("{d}");
        }
        if diags.is_empty() {
            println!("{}: ok ({} functions)", path.display(), m.funcs.len());
        } else {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(Failure(format!(
            "{failed} of {} files have errors",
            files.len()
        )));
    }
    Ok(())
}

fn fmt(file: &Path, check: bool, write: bool) -> Result<(), Failure> {
    let text = read_text(file)?;
    let m = parse_kir(file)?;
    let graphs: Vec<Graph> = m.graphs().cloned().collect();
    let pretty = kiln::print_module(&graphs);
    if check {
        if pretty != text {
            return Err(Failure(format!("{} is not formatted", file.display())));
        }
    } else if write {
        if pretty != text {
            std::fs::write(file, &pretty)
                .map_err(|e| Failure(format!("cannot write {}: {e}", file.display())))?;
        }
    } else {
        print!("{pretty}");
    }
    Ok(())
}

#[derive(clap::Args)]
struct OptArgs {
    file: PathBuf,
    /// Comma-separated passes to run instead of the default pipeline (see `kiln passes`)
    #[arg(long, value_name = "A,B,...")]
    passes: Option<String>,
    /// Print the IR after every pass, to stderr
    #[arg(long)]
    print_after_all: bool,
    /// Report each pass's time and node counts, to stderr
    #[arg(long)]
    time_passes: bool,
    /// Specialize a symbolic dimension, e.g. --dim batch=8 (repeatable)
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = load::parse_binding)]
    dims: Vec<(String, i64)>,
    /// Fix an ONNX model's input shape, e.g. --input-shape images=1,3,320,320 (repeatable)
    #[arg(long = "input-shape", value_name = "NAME=D0,D1,...", value_parser = load::parse_input_shape)]
    shapes: Vec<(String, Vec<i64>)>,
    /// Write the optimized IR to this file (in full) instead of stdout
    #[arg(long, short, value_name = "KIR")]
    output: Option<PathBuf>,
    /// Print constants with more than 64 elements in full instead of as `...`
    #[arg(long)]
    full: bool,
    /// Report kernels and materialized intermediate bytes before and after, to stderr
    #[arg(long)]
    stats: bool,
    /// Print the loop-level kernel IR that code generation makes of the optimized graph
    /// (nodes it cannot lower are listed as running on the interpreter)
    #[arg(long)]
    kernels: bool,
}

fn opt(a: OptArgs) -> Result<(), Failure> {
    let file = a.file.as_path();
    let bytes = read(file)?;
    let graphs: Vec<Graph> = match load::kind_of(&bytes) {
        Kind::Kir => load::parse_kir_text(file, &bytes)?
            .funcs
            .into_iter()
            .map(|f| f.graph)
            .collect(),
        _ => {
            let args = ModelArgs {
                func: None,
                dims: a.dims.clone(),
                shapes: a.shapes.clone(),
                symbolic: false,
            };
            vec![load::open_graph(file, &args, "kiln opt")?]
        }
    };
    for g in &graphs {
        let diags = verify_diagnostics(file, g);
        if !diags.is_empty() {
            return Err(Failure(diags.join("\n")));
        }
    }
    let list = kiln::passes::pass_list(a.passes.as_deref())?;
    let bindings: HashMap<String, i64> = a.dims.into_iter().collect();
    let opts = kiln::pass_options(&bindings);
    let shown = kiln::ir::PrintOptions {
        max_elements: (!a.full).then_some(64),
    };
    let mut out = Vec::with_capacity(graphs.len());
    for g in &graphs {
        let mut print_after = |p: &kiln::passes::Pass, g: &Graph| {
            if a.print_after_all {
                let text = kiln::ir::print_module_with(std::slice::from_ref(g), &shown);
                eprint!("; after {}\n{text}", p.name);
            }
        };
        let (g2, runs) = kiln::passes::run(g, &list, &opts, &mut print_after)
            .map_err(|e| Failure(format!("{}: @{}: {e}", file.display(), g.name())))?;
        if a.time_passes {
            eprintln!(
                "@{}: {:<14} {:>10} {:>7} {:>7}",
                g.name(),
                "pass",
                "time",
                "nodes",
                "after"
            );
            let mut total = std::time::Duration::ZERO;
            for r in &runs {
                total += r.time;
                eprintln!(
                    "@{}: {:<14} {:>8.3}ms {:>7} {:>7}",
                    g.name(),
                    r.pass,
                    r.time.as_secs_f64() * 1e3,
                    r.nodes_before,
                    r.nodes_after
                );
                for n in &r.notes {
                    eprintln!("@{}:   {n}", g.name());
                }
            }
            eprintln!(
                "@{}: {:<14} {:>8.3}ms",
                g.name(),
                "total",
                total.as_secs_f64() * 1e3
            );
        }
        if a.stats {
            let (before, after) = (
                kiln::passes::report(g, &opts.target),
                kiln::passes::report(&g2, &opts.target),
            );
            eprintln!(
                "@{}: kernels {} -> {}, intermediates {:.0} -> {:.0} bytes",
                g.name(),
                before.kernels,
                after.kernels,
                before.intermediate_bytes,
                after.intermediate_bytes
            );
            for u in &after.unkept {
                eprintln!("@{}:   not kept in a kernel: {u}", g.name());
            }
        }
        out.push(g2);
    }
    if a.kernels {
        for g in &out {
            let exe = kiln::Executable::new(g, &Default::default())?;
            print!("{}", exe.kernels_text());
            for (node, why) in exe.coverage().1 {
                println!("; {node} runs on the interpreter: {why}");
            }
        }
        return Ok(());
    }
    match &a.output {
        Some(p) => std::fs::write(p, kiln::print_module(&out))
            .map_err(|e| Failure(format!("cannot write {}: {e}", p.display())))?,
        None => print!("{}", kiln::ir::print_module_with(&out, &shown)),
    }
    Ok(())
}

#[derive(clap::Args)]
struct GraphArgs {
    file: PathBuf,
    /// Draw the graph after the default pipeline has run through this pass (`all`: the whole
    /// pipeline); without it, the graph as loaded
    #[arg(long, value_name = "PASS")]
    after: Option<String>,
    /// The picture: .dot text, or .svg (needs Graphviz's `dot`)
    #[arg(long, short, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

fn graph(a: GraphArgs) -> Result<(), Failure> {
    let file = a.file.as_path();
    let mut g = load::open_graph(file, &a.model, "kiln graph")?;
    let diags = verify_diagnostics(file, &g);
    if !diags.is_empty() {
        return Err(Failure(diags.join("\n")));
    }
    if let Some(after) = &a.after {
        let pipeline = kiln::passes::PIPELINE;
        let upto = if after == "all" {
            pipeline.len()
        } else {
            pipeline
                .iter()
                .position(|p| p == after)
                .map(|i| i + 1)
                .ok_or_else(|| {
                    Failure(format!(
                        "`{after}` is not in the pipeline ({}, or `all`)",
                        pipeline.join(", ")
                    ))
                })?
        };
        let list = kiln::passes::pass_list(Some(&pipeline[..upto].join(",")))?;
        let opts = kiln::pass_options(&HashMap::new());
        g = kiln::passes::run(&g, &list, &opts, &mut |_, _| {})?.0;
    }
    let dot = kiln::graphviz::to_dot(&g);
    let out = a.output.as_path();
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| Failure(format!("cannot write {}: {e}", p.display())))
    };
    match out.extension().and_then(|e| e.to_str()) {
        Some("dot") | Some("gv") => write(out, dot.as_bytes()),
        Some("svg") => {
            use std::io::Write as _;
            let child = std::process::Command::new("dot")
                .arg("-Tsvg")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn();
            let mut child = child.map_err(|_| {
                Failure(
                    "drawing SVG needs Graphviz's `dot` program, which is not installed \
                     (apt-get install graphviz); write a .dot file instead"
                        .into(),
                )
            })?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(dot.as_bytes())?;
            }
            let res = child.wait_with_output()?;
            if !res.status.success() {
                return Err(Failure(format!(
                    "dot failed: {}",
                    String::from_utf8_lossy(&res.stderr).trim()
                )));
            }
            write(out, &res.stdout)
        }
        _ => Err(Failure(format!(
            "{}: the picture must be a .dot or .svg file",
            out.display()
        ))),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Inputs by parameter name, from an .npz archive
    #[arg(long, value_name = "NPZ")]
    inputs: Option<PathBuf>,
    /// Write the outputs to this .npz archive
    #[arg(long, short, value_name = "NPZ")]
    output: Option<PathBuf>,
    /// Generate deterministic random values for inputs not given by --inputs
    #[arg(long)]
    random_inputs: bool,
    /// Seed for --random-inputs
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Say when the model is specialized for the inputs' shapes or values
    #[arg(long, short)]
    verbose: bool,
    /// Print every value instead of the first few
    #[arg(long)]
    full: bool,
    /// Run on the reference interpreter instead of compiled code
    #[arg(long)]
    interp: bool,
}

#[derive(clap::Args)]
struct CompileArgs {
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Specialize for these inputs (an .npz archive): their shapes, and the values of inputs
    /// that set shapes, axes or counts, are fixed in the artifact
    #[arg(long, value_name = "NPZ")]
    inputs: Option<PathBuf>,
    /// Where to write the result
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// The machine the code is for: host (this one), an x86-64 level (x86-64, x86-64-v2,
    /// x86-64-v3, x86-64-v4) or a CPU (haswell, skylake, znver3, ...)
    #[arg(long, default_value = "host")]
    target: String,
    /// What to write: kiln (an artifact for `kiln run` and `Executable` loading), obj (the
    /// kernels' relocatable object file), so (a shared library with a C ABI, and its header
    /// next to it), kir (the optimized graph as text). Default: from the output's extension
    /// (.so, .o, .kir), else kiln
    #[arg(long, value_enum)]
    emit: Option<Emit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    Kiln,
    Obj,
    So,
    Kir,
}

#[derive(clap::Args)]
struct BenchArgs {
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Inputs by parameter name, from an .npz archive (missing ones are random)
    #[arg(long, value_name = "NPZ")]
    inputs: Option<PathBuf>,
    /// Timed runs after warm-up
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Threads for parallel loops (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Measure the reference interpreter instead of compiled code
    #[arg(long)]
    interp: bool,
    /// Print one JSON object: compile_ms, median_ms, p90_ms, peak_bytes, arena_bytes,
    /// intermediate_bytes
    #[arg(long)]
    json: bool,
    /// Also time every kernel and print the most expensive ones (median over the runs)
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "15")]
    profile: Option<usize>,
}

#[derive(clap::Args)]
struct ConformanceArgs {
    /// A folder of test cases (`<case>/model.onnx`, `<case>/test_data_set_0/*.pb`)
    dir: PathBuf,
    /// Only cases whose name contains this text
    #[arg(long)]
    filter: Option<String>,
    /// Print every failing case with its reason
    #[arg(long, short)]
    verbose: bool,
    /// Write the names of the passing cases to this file, one per line
    #[arg(long, value_name = "FILE")]
    write_passing: Option<PathBuf>,
    /// Worker threads (default: all cores)
    #[arg(long)]
    jobs: Option<usize>,
    /// What runs the models
    #[arg(long, value_enum, default_value_t)]
    backend: kiln::onnx::Backend,
}

/// The numbered `prefix_N.pb` files of a test data set, in order.
fn numbered_pbs(dir: &Path, prefix: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Failure(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(".pb")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| read(&p)).collect()
}

/// A test case's model, serialized inputs and serialized expected outputs.
type CaseFiles = (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn run_conformance_case(
    dir: &Path,
    backend: kiln::onnx::Backend,
) -> (Vec<String>, kiln::onnx::Outcome) {
    use kiln::onnx::Outcome;
    let load = || -> Result<CaseFiles, Failure> {
        let model = read(&dir.join("model.onnx"))?;
        let data = dir.join("test_data_set_0");
        Ok((
            model,
            numbered_pbs(&data, "input_")?,
            numbered_pbs(&data, "output_")?,
        ))
    };
    let (model, inputs, outputs) = match load() {
        Ok(x) => x,
        Err(Failure(e)) => return (vec![], Outcome::Fail(e)),
    };
    let ops = kiln::onnx::op_types(&model);
    let outcome = std::panic::catch_unwind(|| {
        kiln::onnx::check_case(&model, &inputs, &outputs, Default::default(), backend)
    })
    .unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::Fail(format!("internal error (panic): {msg}"))
    });
    (ops, outcome)
}

fn conformance(a: ConformanceArgs) -> Result<(), Failure> {
    use kiln::onnx::Outcome;
    use std::collections::BTreeMap;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .map_err(|e| Failure(format!("cannot read {}: {e}", a.dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .filter(|p| {
            a.filter.as_deref().is_none_or(|f| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(f))
            })
        })
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(Failure(format!(
            "no test cases (<case>/model.onnx) in {}",
            a.dir.display()
        )));
    }
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(cases.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(dir) = cases.get(i) else { break };
                let name = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("?")
                    .to_string();
                let (ops, outcome) = run_conformance_case(dir, a.backend);
                results
                    .lock()
                    .expect("no worker panics while holding the lock")
                    .push((name, ops, outcome));
            });
        }
    });
    let mut results = results.into_inner().expect("workers are done");
    results.sort_by(|x, y| x.0.cmp(&y.0));
    let mut per_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut passing = Vec::new();
    for (name, ops, outcome) in &results {
        let ok = matches!(outcome, Outcome::Pass);
        for op in ops {
            let e = per_op.entry(op.clone()).or_default();
            e.1 += 1;
            if ok {
                e.0 += 1;
            }
        }
        match outcome {
            Outcome::Pass => passing.push(name.clone()),
            Outcome::Fail(why) if a.verbose => println!("FAIL {name}: {why}"),
            Outcome::Fail(_) => {}
        }
    }
    println!("{:<34} {:>6} {:>6}", "op", "passed", "cases");
    for (op, (p, t)) in &per_op {
        println!("{op:<34} {p:>6} {t:>6}");
    }
    if let Some(path) = &a.write_passing {
        let mut text = passing.join("\n");
        text.push('\n');
        std::fs::write(path, text)
            .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
    }
    println!(
        "conformance: {} passed, {} failed",
        passing.len(),
        results.len() - passing.len()
    );
    Ok(())
}

fn inspect(path: &Path) -> Result<(), Failure> {
    if load::is_artifact_file(path) {
        return inspect_artifact(path);
    }
    let bytes = read(path)?;
    let hint = " (`kiln check` verifies .kir files, `kiln opt` prints them optimized)";
    load::expect_kind(
        path,
        load::kind_of(&bytes),
        &[Kind::Onnx, Kind::Artifact],
        hint,
    )?;
    let external = load::external_data(path, &bytes)?;
    let summary = kiln::onnx::inspect(&bytes, external)
        .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    print!("{summary}");
    match summary.import_error {
        Some(_) => Err(Failure(format!(
            "{}: the import failed (`kiln run` and `kiln compile --input-shape` specialize \
             for given shapes, which may succeed where symbolic shapes do not)",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// What a .kiln artifact holds, and whether this machine can run it.
fn inspect_artifact(path: &Path) -> Result<(), Failure> {
    let file = path.display();
    let bytes = read(path)?;
    let a = kiln::runtime::artifact::read(&bytes).map_err(|e| Failure(format!("{file}: {e}")))?;
    println!(
        "kiln artifact, format {}",
        kiln::runtime::artifact::FORMAT_VERSION
    );
    println!("built by kiln {}", a.kiln_version);
    println!("target: {}", a.target);
    println!("needs: {}", a.features.join(", "));
    println!("sections:");
    for (name, s) in &a.sections {
        println!("  {name:<10} {:>10} bytes", s.len());
    }
    drop(a);
    // The bytes read above, kept by the executable (not copied again).
    let exe = match kiln::artifact::load_shared(std::sync::Arc::new(bytes), &Default::default()) {
        Ok(exe) => exe,
        Err(e) => {
            println!("this machine cannot load it: {e}");
            return Ok(());
        }
    };
    println!("@{}", exe.name());
    for (what, list) in [("inputs", exe.params()), ("outputs", exe.outputs())] {
        println!("{what}:");
        for (n, t) in list {
            println!("  {n}: {t}");
        }
    }
    let (native, interp) = exe.coverage();
    println!(
        "{native} kernels compiled, {} nodes on the interpreter",
        interp.len()
    );
    for (node, why) in interp {
        println!("  {node}: {why}");
    }
    Ok(())
}

/// Says which nodes run on the interpreter because codegen cannot lower them yet.
fn note_coverage(exe: &kiln::Executable) {
    let (native, interp) = exe.coverage();
    if !interp.is_empty() {
        eprintln!(
            "note: {native} kernels compiled, {} nodes on the reference interpreter:",
            interp.len()
        );
        for (node, why) in interp.iter().take(5) {
            eprintln!("  {node}: {why}");
        }
        if interp.len() > 5 {
            eprintln!("  and {} more", interp.len() - 5);
        }
    }
}

fn bench(a: BenchArgs) -> Result<(), Failure> {
    use std::time::Instant;
    if a.runs == 0 {
        return Err(Failure("--runs must be at least 1".into()));
    }
    let bindings = a.model.bindings();
    let compile = kiln::CompileOptions {
        interpret_only: a.interp,
        threads: a.threads,
        ..Default::default()
    };
    // A .kiln artifact is loaded (and that is timed) instead of compiled.
    let t0 = Instant::now();
    let loaded = load::open(&a.file, &a.model, a.model.options(compile))?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (name, params) = loaded.interface();
    let inputs = load::prepare_inputs(
        name,
        params,
        loaded.structured(),
        a.inputs.as_deref(),
        true,
        0,
        &bindings,
    )?;
    let mut specialized = false;
    let (exe, what, compile_ms) = match loaded {
        Loaded::Artifact(exe) => (std::sync::Arc::new(exe), "load", load_ms),
        Loaded::Model(model) => {
            let t0 = Instant::now();
            let exe = model.executable_for(&inputs)?;
            let ms = load_ms + t0.elapsed().as_secs_f64() * 1e3;
            specialized = model.specializations() > 0;
            if specialized && !a.json {
                eprintln!(
                    "note: the model was specialized for these inputs ({}): compile time \
                     includes that import",
                    model
                        .symbolic()
                        .err()
                        .map_or(String::new(), |e| e.to_string())
                );
            }
            (exe, "compile", ms)
        }
    };
    if !a.json {
        note_coverage(&exe);
    }
    let ordered: Vec<Tensor> = exe
        .params()
        .iter()
        .map(|(p, _)| {
            inputs
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Failure(format!("missing input \"{p}\"")))
        })
        .collect::<Result<_, _>>()?;
    let mut peak = 0;
    let (mut planned, mut total) = (0, 0);
    for _ in 0..a.warmup.max(1) {
        let (_, stats) = exe
            .run_stats(&ordered, &bindings)
            .map_err(kiln::Error::from)?;
        peak = peak.max(stats.peak_bytes);
        (planned, total) = (stats.planned_bytes, stats.total_bytes);
    }
    let mut times = Vec::with_capacity(a.runs);
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        let (_, stats) = exe
            .run_stats(&ordered, &bindings)
            .map_err(kiln::Error::from)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(stats.peak_bytes);
    }
    if a.profile.is_some() {
        // Separate runs: timing every step perturbs the latency measured above.
        for _ in 0..a.runs {
            let (_, stats) = exe
                .run_profiled(&ordered, &bindings)
                .map_err(kiln::Error::from)?;
            if per_step.is_empty() {
                per_step = stats
                    .steps
                    .iter()
                    .map(|(l, _)| (l.clone(), vec![]))
                    .collect();
            }
            for ((_, v), (_, s)) in per_step.iter_mut().zip(&stats.steps) {
                v.push(s * 1e3);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[((times.len() * 9) / 10).min(times.len() - 1)];
    if a.json {
        println!(
            "{{\"{what}_ms\": {compile_ms:.3}, \"specialized\": {specialized}, \"median_ms\": {median:.4}, \"p90_ms\": {p90:.4}, \"peak_bytes\": {peak}, \"arena_bytes\": {planned}, \"intermediate_bytes\": {total}}}"
        );
    } else {
        println!(
            "{what:<9} {compile_ms:>10.2} ms{}",
            if specialized {
                "  (specialized for the inputs)"
            } else {
                ""
            }
        );
        println!(
            "median    {median:>10.4} ms  ({} runs after {} warm-up)",
            a.runs, a.warmup
        );
        println!("p90       {p90:>10.4} ms");
        println!("peak      {peak:>10} bytes");
        println!(
            "arena     {planned:>10} bytes planned for {total} bytes of intermediates and scratch"
        );
    }
    if let Some(top) = a.profile {
        let mut rows: Vec<(String, f64)> = per_step
            .into_iter()
            .map(|(l, mut v)| {
                v.sort_by(f64::total_cmp);
                (l, v[v.len() / 2])
            })
            .collect();
        let sum: f64 = rows.iter().map(|r| r.1).sum();
        rows.sort_by(|x, y| y.1.total_cmp(&x.1));
        let out = |s: String| {
            if a.json {
                eprintln!("{s}")
            } else {
                println!("{s}")
            }
        };
        out(format!(
            "profile   {sum:>10.4} ms in {} steps; the slowest:",
            rows.len()
        ));
        for (l, ms) in rows.iter().take(top) {
            out(format!(
                "  {ms:>9.4} ms {:>5.1}%  {l}",
                100.0 * ms / sum.max(1e-12)
            ));
        }
    }
    Ok(())
}

fn compile_artifact(a: CompileArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let out = &a.output;
    let emit = a
        .emit
        .unwrap_or_else(|| match out.extension().and_then(|e| e.to_str()) {
            Some("so") => Emit::So,
            Some("o") => Emit::Obj,
            Some("kir") => Emit::Kir,
            _ => Emit::Kiln,
        });
    let (g, guards) = match &a.inputs {
        None => (load::open_graph(&a.file, &a.model, "kiln compile")?, vec![]),
        Some(npz_path) => {
            let Loaded::Model(model) =
                load::open(&a.file, &a.model, a.model.options(Default::default()))?
            else {
                return Err(Failure(format!("{} is already compiled", a.file.display())));
            };
            let inputs = load::prepare_inputs(
                "main",
                model.params(),
                model.structured(),
                Some(npz_path),
                false,
                0,
                &a.model.bindings(),
            )?;
            let (g, guards) = model.specialization(&inputs)?;
            if !guards.is_empty() {
                let names: Vec<&str> = guards.iter().map(|(n, _)| n.as_str()).collect();
                eprintln!(
                    "note: the artifact is specialized for the values of {} and refuses others",
                    names.join(", ")
                );
            }
            ((*g).clone(), guards)
        }
    };
    let optimized = kiln::optimize(&g, None, &HashMap::new())?;
    let write = |bytes: &[u8]| {
        std::fs::write(out, bytes)
            .map_err(|e| Failure(format!("cannot write {}: {e}", out.display())))
    };
    let mut also = String::new();
    let bytes = match emit {
        Emit::Kir => {
            let text = kiln::print_graph(&optimized);
            write(text.as_bytes())?;
            text.len()
        }
        Emit::Kiln | Emit::Obj | Emit::So => {
            let opts = kiln::CompileOptions {
                guards,
                ..Default::default()
            };
            let bytes = kiln::artifact::compile(&optimized, &opts, &a.target)?;
            match emit {
                Emit::Kiln => write(&bytes)?,
                Emit::Obj => write(kiln::artifact::object_code(&bytes)?)?,
                _ => {
                    let about = format!("{} (@{})", a.file.display(), optimized.name());
                    let header = kiln::clib::build(&bytes, &optimized, &about, out)?;
                    also = format!(" and {}", header.display());
                }
            }
            std::fs::metadata(out).map_or(bytes.len() as u64, |m| m.len()) as usize
        }
    };
    eprintln!(
        "wrote {} ({bytes} bytes){also} in {:.1} ms",
        out.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn run(a: RunArgs) -> Result<(), Failure> {
    let bindings = a.model.bindings();
    let compile = kiln::CompileOptions {
        interpret_only: a.interp,
        ..Default::default()
    };
    let mut opts = a.model.options(compile);
    if a.verbose {
        opts.log = Some(std::sync::Arc::new(|m: &str| eprintln!("note: {m}")));
    }
    let loaded = load::open(&a.file, &a.model, opts)?;
    let (name, params) = loaded.interface();
    let inputs = load::prepare_inputs(
        name,
        params,
        loaded.structured(),
        a.inputs.as_deref(),
        a.random_inputs,
        a.seed,
        &bindings,
    )?;
    let outputs = match loaded {
        Loaded::Artifact(exe) => kiln::execute(&exe, &inputs, &bindings)?,
        Loaded::Model(model) => {
            if a.interp {
                model.interpret(&inputs)?
            } else {
                let exe = model.executable_for(&inputs)?;
                note_coverage(&exe);
                kiln::execute(&exe, &inputs, &bindings)?
            }
        }
    };
    show_outputs(&a, &outputs)
}

/// Prints outputs (the first few values unless --full) and writes them with --output.
fn show_outputs(a: &RunArgs, outputs: &[(String, Tensor)]) -> Result<(), Failure> {
    for (name, t) in outputs {
        let values = if a.full {
            format::values(t)
        } else {
            format::head(t, 8)
        };
        println!("{name}: {} = {values}", t.ty());
    }
    if let Some(path) = &a.output {
        let bytes = npz::write_npz(outputs)?;
        std::fs::write(path, bytes)
            .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
        eprintln!("wrote {} outputs to {}", outputs.len(), path.display());
    }
    Ok(())
}

fn ops() {
    for m in kiln::Op::MNEMONICS {
        let doc = kiln::Op::doc_of(m).unwrap_or_default().replace('\n', " ");
        println!("{m:<14} {doc}");
    }
}

fn main() -> ExitCode {
    // Output piped into a program that stops reading (`kiln run … | head`) ends kiln quietly,
    // as it does other command-line tools, instead of a panic on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { files } => check(&files),
        Cmd::Fmt { file, check, write } => fmt(&file, check, write),
        Cmd::Run(args) => run(args),
        Cmd::Compile(args) => compile_artifact(args),
        Cmd::Conformance(args) => conformance(args),
        Cmd::Inspect { file } => inspect(&file),
        Cmd::Opt(args) => opt(args),
        Cmd::Graph(args) => graph(args),
        Cmd::Passes => {
            for p in kiln::passes::PASSES {
                println!("{:<14} {}", p.name, p.summary);
            }
            println!("\npipeline: {}", kiln::passes::PIPELINE.join(","));
            Ok(())
        }
        Cmd::Ops => {
            ops();
            Ok(())
        }
        Cmd::Bench(args) => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            // Diagnostics come formatted (`file:line:col: error: …`); other messages get the
            // prefix (even when they quote a tool's own `error:` lines further down).
            if msg.lines().next().is_some_and(|l| l.contains(": error: ")) {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}
