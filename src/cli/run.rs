//! `kiln run`: compile (or load) a model, run it on inputs from files or random ones, print
//! and save the outputs, and compare them with expected ones.

use std::path::PathBuf;

use kiln::{format, npz, Tensor};

use crate::data;
use crate::load::{self, Loaded, ModelArgs};
use crate::progress::Progress;
use crate::Failure;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The model: an ONNX file, .kir text or a compiled .kiln artifact (told apart by content)
    #[arg(value_name = "MODEL")]
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Inputs by name: .npz archives, .npy files (named by their file stem), ONNX TensorProto
    /// .pb files (named as they record, else in the model's input order) or folders of them
    /// (ONNX test data: input_0.pb, ...); repeatable
    #[arg(long, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Write the outputs to this .npz archive (checked before the model runs)
    #[arg(long, short, value_name = "NPZ")]
    output: Option<PathBuf>,
    /// Compare the outputs with expected ones (files as for --inputs; output_N.pb in a
    /// folder): one line per output, and a failure when any differs
    #[arg(long, value_name = "FILE")]
    expect: Vec<PathBuf>,
    /// Relative tolerance of --expect for floats
    #[arg(long, default_value_t = 1e-3, requires = "expect")]
    rtol: f64,
    /// Absolute tolerance of --expect for floats
    #[arg(long, default_value_t = 1e-5, requires = "expect")]
    atol: f64,
    /// Threads for parallel loops (default: all cores); results do not depend on it
    #[arg(long)]
    threads: Option<usize>,
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

/// Says which nodes run on the interpreter because codegen cannot lower them yet.
pub fn note_coverage(exe: &kiln::Executable) {
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

pub fn run(a: RunArgs) -> Result<(), Failure> {
    if let Some(path) = &a.output {
        data::check_output(path)?;
    }
    if a.threads == Some(0) {
        return Err(Failure("--threads must be at least 1".into()));
    }
    let bindings = a.model.bindings();
    let compile = kiln::CompileOptions {
        interpret_only: a.interp,
        threads: a.threads,
        ..Default::default()
    };
    let mut opts = a.model.options(compile);
    if a.verbose {
        opts.log = Some(std::sync::Arc::new(|m: &str| {
            crate::progress::note(&format!("note: {m}"))
        }));
    }
    let loaded = {
        let _p = Progress::spinner("loading");
        load::open(&a.file, &a.model, opts)?
    };
    // Expected outputs are read before anything runs: a bad file fails first.
    let expected = match a.expect.is_empty() {
        true => None,
        false => Some(data::read_tensors(&a.expect, "output_", &loaded.outputs())?),
    };
    let (name, params) = loaded.interface();
    let inputs = load::prepare_inputs(
        name,
        params,
        &loaded.inputs(),
        &a.inputs,
        a.random_inputs,
        a.seed,
        &bindings,
    )?;
    let outputs = match loaded {
        Loaded::Artifact(exe) => {
            let _p = Progress::spinner("running");
            kiln::execute(&exe, &inputs, &bindings)?
        }
        Loaded::Model(model) => {
            if a.interp {
                let _p = Progress::spinner("running on the reference interpreter");
                model.interpret(&inputs)?
            } else {
                let exe = {
                    let _p = Progress::spinner("compiling");
                    model.executable_for(&inputs)?
                };
                note_coverage(&exe);
                let _p = Progress::spinner("running");
                kiln::execute(&exe, &inputs, &bindings)?
            }
        }
    };
    show_outputs(&a, &outputs)?;
    if let Some(expected) = expected {
        let tol = kiln::onnx::Tolerance {
            rtol: a.rtol,
            atol: a.atol,
        };
        data::check_expected(&outputs, &expected, tol)?;
    }
    Ok(())
}

/// Prints outputs (the first few values unless --full) and writes them with --output.
fn show_outputs(a: &RunArgs, outputs: &[(String, Tensor)]) -> Result<(), Failure> {
    if outputs.is_empty() {
        println!("(no outputs)");
    }
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
