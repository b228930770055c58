//! The `kiln` command-line interface: a thin layer over the library that owns the files,
//! prints diagnostics as `file:line:col: error: ...` and sets the exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::Graph;

#[path = "cli/bench.rs"]
mod bench;
#[path = "cli/compile.rs"]
mod compile;
#[path = "cli/conformance.rs"]
mod conformance;
#[path = "cli/data.rs"]
mod data;
#[path = "cli/load.rs"]
mod load;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/run.rs"]
mod run;
use load::{parse_kir, read, Kind, ModelArgs};

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
        /// The .kir files
        #[arg(required = true, value_name = "KIR")]
        files: Vec<PathBuf>,
    },
    /// Print a .kir file in canonical form (comments are not kept)
    Fmt {
        /// The .kir file
        #[arg(value_name = "KIR")]
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
    Run(run::RunArgs),
    /// Compile a model (.onnx or .kir) ahead of time into a .kiln artifact that runs without
    /// the compiler (`kiln run model.kiln`)
    Compile(compile::CompileArgs),
    /// Run the ONNX backend node tests in DIR on kiln and report pass counts per op
    Conformance(conformance::ConformanceArgs),
    /// Summarize an ONNX model (opsets, inputs and outputs, parameters, op histogram) or a
    /// .kiln artifact (versions, target and CPU features, sections, inputs and outputs, kernels)
    Inspect {
        /// An ONNX model or a .kiln artifact
        #[arg(value_name = "MODEL")]
        file: PathBuf,
    },
    /// Optimize a model (.kir or .onnx) and print the resulting IR
    Opt(OptArgs),
    /// List the optimizer's passes and the default pipeline
    Passes,
    /// Draw a model's graph (kernels as clusters) as Graphviz .dot, or .svg through `dot`
    Graph(GraphArgs),
    /// List the ops of the IR with their documentation
    Ops,
    /// Compile a model and measure it: compile time, latency median and p90, peak memory
    Bench(bench::BenchArgs),
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
    /// The model: .kir text or an ONNX file
    #[arg(value_name = "MODEL")]
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
    if let Some(out) = &a.output {
        data::check_output(out)?;
    }
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
            let exe = kiln::executable(g, &Default::default())?;
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
    /// The model: an ONNX file or .kir text
    #[arg(value_name = "MODEL")]
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
    data::check_output(&a.output)?;
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
        std::fs::write(p, bytes)
            .map_err(|e| Failure(format!("cannot write {}: {e}", p.display())))?;
        eprintln!(
            "wrote {} ({} nodes, {})",
            p.display(),
            g.len(),
            kiln::format::bytes(bytes.len() as u64)
        );
        Ok(())
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
        Cmd::Run(args) => run::run(args),
        Cmd::Compile(args) => compile::compile_artifact(args),
        Cmd::Conformance(args) => conformance::conformance(args),
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
        Cmd::Bench(args) => bench::bench(args),
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
