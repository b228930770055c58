//! `kiln opt`: a model through the optimizer's passes, printed as .kir (or as the kernel IR
//! code generation makes of it).

use std::collections::HashMap;
use std::path::PathBuf;

use kiln::Graph;

use crate::kir::verify_diagnostics;
use crate::load::{self, read, Kind, ModelArgs};
use crate::{data, Failure};

#[derive(clap::Args)]
pub struct OptArgs {
    /// The model: .kir text or an ONNX file
    #[arg(value_name = "MODEL")]
    file: PathBuf,
    /// Comma-separated passes to run instead of the default pipeline (see `kiln passes`)
    #[arg(long, value_name = "A,B,...")]
    passes: Option<String>,
    /// Print the IR after every pass (with --kernels, also each node's kernel after lowering
    /// and after every kernel transform), to stderr
    #[arg(long)]
    print_after_all: bool,
    /// Print the IR after these passes, to stderr; with --kernels, kernel transforms
    /// (`lower` for the kernel as lowered) name kernel stages (see `kiln passes`)
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    print_after: Vec<String>,
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

pub fn opt(a: OptArgs) -> Result<(), Failure> {
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
    let transforms = kiln::kernel::transforms::TRANSFORMS;
    for n in &a.print_after {
        let pass = kiln::passes::PASSES.iter().any(|p| p.name == n);
        let stage = n == "lower" || transforms.iter().any(|t| t.name == n);
        if stage && !a.kernels {
            return Err(Failure(format!(
                "--print-after {n}: `{n}` is a kernel stage, shown with --kernels"
            )));
        }
        if !pass && !stage {
            return Err(Failure(format!(
                "--print-after {n}: no pass or kernel transform is called `{n}` (see `kiln passes`)"
            )));
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
            if a.print_after_all || a.print_after.iter().any(|n| n == p.name) {
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
            print_kernel_stages(g, &a.print_after, a.print_after_all);
        }
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

/// Each computing node of `g` lowered alone, printed to stderr after the kernel stages
/// `names` (or all of them) name.
fn print_kernel_stages(g: &Graph, names: &[String], all: bool) {
    if !all && names.is_empty() {
        return;
    }
    let Ok(order) = g.topo_order() else {
        return;
    };
    let mut n = 0;
    for id in order {
        let op = g.node(id).op();
        if matches!(op, kiln::Op::Param { .. } | kiln::Op::Constant { .. }) {
            continue;
        }
        let sub = kiln::kernel::single_node_graph(g, id);
        let name = format!("k{n}");
        n += 1;
        let machine = kiln::kernel::target::Machine::CRANELIFT;
        let _ = kiln::codegen::lower::lower_with(&sub, &name, &machine, &mut |stage, k| {
            if all || names.iter().any(|s| s == stage) {
                eprintln!("; after {stage} (@{}, {})\n{k}", g.name(), op.mnemonic());
            }
        });
    }
}
