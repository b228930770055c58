//! `kiln compile`: a model ahead of time into a .kiln artifact, an object file, a shared
//! library with a C API, or optimized .kir text.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::load::{self, Loaded, ModelArgs};
use crate::progress::Progress;
use crate::{data, Failure};

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The model: an ONNX file or .kir text
    #[arg(value_name = "MODEL")]
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Specialize for these inputs (files as for `kiln run --inputs`): their shapes, and the
    /// values of inputs that set shapes, axes or counts, are fixed in the artifact
    #[arg(long, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Where to write the result
    #[arg(long, short, value_name = "OUT")]
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
    /// The name of a shared library's C API (--emit so): it prefixes every symbol and macro
    /// (`mlp_create`, `mlp_run`, `MLP_INPUTS`) and names the header (`mlp.h`), so several
    /// model libraries link into one program. Default: from the output's file name
    /// (`libmlp.so` → mlp)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    Kiln,
    Obj,
    So,
    Kir,
}

pub fn compile_artifact(a: CompileArgs) -> Result<(), Failure> {
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
    let lib_name = match (&a.name, emit) {
        (Some(_), e) if e != Emit::So => {
            return Err(Failure(
                "--name names a shared library's C API: it applies to --emit so only".into(),
            ))
        }
        (Some(n), _) => n.clone(),
        (None, _) => kiln::clib::default_name(out),
    };
    if emit == Emit::So {
        kiln::clib::check_name(&lib_name)?;
    }
    data::check_output(out)?;
    let progress = Progress::spinner("importing");
    let (g, guards) = match a.inputs.as_slice() {
        [] => (load::open_graph(&a.file, &a.model, "kiln compile")?, vec![]),
        files => {
            let Loaded::Model(model) =
                load::open(&a.file, &a.model, a.model.options(Default::default()))?
            else {
                return Err(Failure(format!("{} is already compiled", a.file.display())));
            };
            let inputs = load::prepare_inputs(
                "main",
                model.params(),
                model.interface(),
                files,
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
    progress.set_message("optimizing");
    let optimized = kiln::optimize(&g, None, &HashMap::new())?;
    progress.set_message("compiling");
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
                    let header = kiln::clib::build(&bytes, &optimized, &lib_name, &about, out)?;
                    also = format!(" and {}", header.display());
                }
            }
            std::fs::metadata(out).map_or(bytes.len() as u64, |m| m.len()) as usize
        }
    };
    drop(progress);
    eprintln!(
        "wrote {} ({}){also} in {:.1} ms",
        out.display(),
        kiln::format::bytes(bytes as u64),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
