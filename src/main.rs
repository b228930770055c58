//! The `kiln` command-line interface: a thin layer over the library that owns the files,
//! prints diagnostics as `file:line:col: error: ...` and sets the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "cli/bench.rs"]
mod bench;
#[path = "cli/compile.rs"]
mod compile;
#[path = "cli/conformance.rs"]
mod conformance;
#[path = "cli/data.rs"]
mod data;
#[path = "cli/graph.rs"]
mod graph;
#[path = "cli/inspect.rs"]
mod inspect;
#[path = "cli/kir.rs"]
mod kir;
#[path = "cli/load.rs"]
mod load;
#[path = "cli/opt.rs"]
mod opt;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/run.rs"]
mod run;

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
    Opt(opt::OptArgs),
    /// List the optimizer's passes and the default pipeline
    Passes,
    /// Draw a model's graph (kernels as clusters) as Graphviz .dot, or .svg through `dot`
    Graph(graph::GraphArgs),
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
        Cmd::Check { files } => kir::check(&files),
        Cmd::Fmt { file, check, write } => kir::fmt(&file, check, write),
        Cmd::Run(args) => run::run(args),
        Cmd::Compile(args) => compile::compile_artifact(args),
        Cmd::Conformance(args) => conformance::conformance(args),
        Cmd::Inspect { file } => inspect::inspect(&file),
        Cmd::Opt(args) => opt::opt(args),
        Cmd::Graph(args) => graph::graph(args),
        Cmd::Passes => {
            for p in kiln::passes::PASSES {
                println!("{:<14} {}", p.name, p.summary);
            }
            println!("\npipeline: {}", kiln::passes::PIPELINE.join(","));
            println!("\nkernel transforms (after lowering each node; `kiln opt --kernels`):");
            for t in kiln::kernel::transforms::TRANSFORMS {
                println!("{:<14} {}", t.name, t.summary);
            }
            println!(
                "\nkernel pipeline: {}",
                kiln::kernel::transforms::PIPELINE.join(",")
            );
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
