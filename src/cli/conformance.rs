//! `kiln conformance`: the ONNX backend node tests, run as a user runs a model, with pass
//! counts per op.

use std::path::{Path, PathBuf};

use kiln::frontends::onnx::{self, ExternalData};
use kiln::Tensor;

use crate::load::read;
use crate::progress::Progress;
use crate::Failure;

#[derive(clap::Args)]
pub struct ConformanceArgs {
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
    backend: Backend,
}

/// The numbered `prefix_N.pb` files of a test data set, in order, read.
fn numbered_pbs(dir: &Path, prefix: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let files = crate::data::numbered_files(dir, prefix)?;
    files.iter().map(|p| read(p)).collect()
}

/// A test case's model, serialized inputs and serialized expected outputs.
type CaseFiles = (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn run_conformance_case(dir: &Path, backend: Backend) -> (Vec<String>, Outcome) {
    use Outcome;
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
        check_case(&model, &inputs, &outputs, Default::default(), backend)
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

pub fn conformance(a: ConformanceArgs) -> Result<(), Failure> {
    use std::collections::BTreeMap;
    use Outcome;
    if let Some(path) = &a.write_passing {
        crate::data::check_output(path)?;
    }
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
    let progress = Progress::bar(cases.len(), "conformance");
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
                progress.inc();
                results
                    .lock()
                    .expect("no worker panics while holding the lock")
                    .push((name, ops, outcome));
            });
        }
    });
    drop(progress);
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

/// The outcome of one conformance case.
#[derive(Clone, Debug)]
pub enum Outcome {
    Pass,
    Fail(String),
}

/// What executes a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The reference interpreter on the imported graph.
    #[default]
    Interp,
    /// The default pipeline, then compiled code.
    Jit,
}

/// Runs one ONNX node test: the model, its serialized input tensors and expected outputs.
fn check_case(
    model: &[u8],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
    tol: kiln::onnx::Tolerance,
    backend: Backend,
) -> Outcome {
    match run_case(model, inputs, outputs, tol, backend) {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

fn run_case(
    model: &[u8],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
    tol: kiln::onnx::Tolerance,
    backend: Backend,
) -> std::result::Result<(), String> {
    let m = onnx::decode_model(model).map_err(|e| e.to_string())?;
    let g = m.graph.as_ref().ok_or("the model has no graph")?;
    let kind = |vi: &onnx::proto::ValueInfoProto| {
        onnx::Kind::of(vi.r#type.as_ref()).map_err(|e| format!("`{}`: {e}", vi.name))
    };
    let graph_inputs: Vec<&onnx::proto::ValueInfoProto> = g
        .input
        .iter()
        .filter(|vi| !g.initializer.iter().any(|t| t.name == vi.name))
        .collect();
    // Values (tensors, sequences, optionals) travel as the tensors a run gives.
    let mut named = Vec::new();
    for (i, bytes) in inputs.iter().enumerate() {
        let vi = graph_inputs
            .get(i)
            .ok_or("more input files than graph inputs")?;
        named.extend(
            onnx::decode_value(bytes, &kind(vi)?, &vi.name)
                .map_err(|e| format!("input {i}: {e}"))?,
        );
    }
    // As a user runs a model: the import sees no input values, and whatever it needs of them
    // (a `k`, axes, a shape) comes from specializing on the run's inputs.
    let model = kiln::Model::from_onnx(model, ExternalData::new(), Default::default())
        .map_err(|e| e.to_string())?;
    let got = match backend {
        Backend::Interp => model.interpret(&named),
        Backend::Jit => model.run(&named),
    }
    .map_err(|e| e.to_string())?;
    let mut want = Vec::new();
    for (i, (bytes, vi)) in outputs.iter().zip(&g.output).enumerate() {
        want.extend(
            onnx::decode_value(bytes, &kind(vi)?, &vi.name)
                .map_err(|e| format!("output {i}: {e}"))?,
        );
    }
    let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(&got) != names(&want) {
        return Err(format!(
            "outputs {:?}, expected {:?}",
            names(&got),
            names(&want)
        ));
    }
    for ((name, t), (_, w)) in got.iter().zip(&want) {
        if let Some(why) = kiln::onnx::mismatch(t, w, tol) {
            return Err(format!("output {name}: {why}"));
        }
    }
    Ok(())
}
