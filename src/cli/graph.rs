//! `kiln graph`: a model's graph drawn as Graphviz .dot (or .svg through `dot`), kernels as
//! clusters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::kir::verify_diagnostics;
use crate::load::{self, ModelArgs};
use crate::{data, Failure};

#[derive(clap::Args)]
pub struct GraphArgs {
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

pub fn graph(a: GraphArgs) -> Result<(), Failure> {
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
