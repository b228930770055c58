//! Compiled models as files (`.kiln`): [`compile`] writes a graph's kernels as native code
//! with the graph and its weights into a [`runtime::artifact`] container; [`load`] makes an
//! [`Executable`] from one without invoking the code generator's compiler (the kernels are
//! lowered again — deterministic, cheap — to recover their plan, and their code is mapped from
//! the artifact's object file).
//!
//! Sections: `graph` (the graph as text, named constants `extern`), `weights` (the named
//! constants, an npz archive), `object` (the kernels' object file), `kernels` (how many).

use std::collections::BTreeMap;

use runtime::artifact::{self, ArtifactError};

use crate::{CompileOptions, Error, Executable, Graph};

/// Why an artifact cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error(transparent)]
    Container(#[from] ArtifactError),
    #[error("the artifact was built by kiln {found}; this is kiln {}", env!("CARGO_PKG_VERSION"))]
    KilnVersion { found: String },
    #[error("the artifact is for {found}; this machine is {host}")]
    Target { found: String, host: String },
    #[error("this CPU lacks features the artifact's code needs: {}", .0.join(", "))]
    MissingFeatures(Vec<String>),
    #[error("the artifact has no `{0}` section")]
    MissingSection(&'static str),
    #[error("the artifact's {what}: {message}")]
    Bad { what: &'static str, message: String },
}

fn bad(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> AotError {
    move |e| AotError::Bad {
        what,
        message: e.to_string(),
    }
}

/// Compiles `g` (already optimized, as the executable will run it) into artifact bytes for
/// this machine. The same graph and kiln give the same bytes.
pub fn compile(g: &Graph, opts: &CompileOptions) -> Result<Vec<u8>, Error> {
    let codegen = |e: &dyn std::fmt::Display| crate::ExecError::Codegen(e.to_string());
    let (triple, features) = codegen::aot::target().map_err(|e| codegen(&e))?;
    let mut object = Vec::new();
    let mut count = 0usize;
    // Lowering as the executable will, keeping the object (and checking it loads).
    Executable::with_code(g, opts, &mut |kernels| {
        object = codegen::aot::compile_object(kernels).map_err(|e| codegen(&e))?;
        count = kernels.len();
        let image = codegen::aot::Image::load(&object, kernels.len()).map_err(|e| codegen(&e))?;
        Ok(Box::new(image))
    })?;
    let text = ir::print_module_with(
        std::slice::from_ref(g),
        &ir::PrintOptions {
            external_data: true,
            ..Default::default()
        },
    );
    let weights: Vec<(String, crate::Tensor)> = ir::named_constants(g).into_iter().collect();
    let weights = crate::npz::write_npz(&weights)?;
    let count = (count as u64).to_le_bytes();
    Ok(artifact::write(
        env!("CARGO_PKG_VERSION"),
        &triple,
        &features,
        &[
            ("graph", text.as_bytes()),
            ("weights", &weights),
            ("object", &object),
            ("kernels", &count),
        ],
    ))
}

/// Makes an executable from artifact bytes, checking the container, the kiln version, the
/// target and the CPU's features before any of its code is mapped.
pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, Error> {
    let a = artifact::read(bytes).map_err(AotError::from)?;
    if a.kiln_version != env!("CARGO_PKG_VERSION") {
        return Err(AotError::KilnVersion {
            found: a.kiln_version,
        }
        .into());
    }
    let (host, _) = codegen::aot::target().map_err(|e| crate::ExecError::Codegen(e.to_string()))?;
    if a.target != host {
        return Err(AotError::Target {
            found: a.target,
            host,
        }
        .into());
    }
    let missing = artifact::missing_features(&a.features);
    if !missing.is_empty() {
        return Err(AotError::MissingFeatures(missing).into());
    }
    let section = |name: &'static str| a.section(name).ok_or(AotError::MissingSection(name));
    let weights: BTreeMap<String, crate::Tensor> = crate::npz::read_npz(section("weights")?)
        .map_err(|e| bad("weights")(&e))?
        .into_iter()
        .collect();
    let text = std::str::from_utf8(section("graph")?).map_err(|e| bad("graph")(&e))?;
    let module = ir::parse_module_with(text, &weights).map_err(|e| bad("graph")(&e))?;
    let g = module
        .graphs()
        .next()
        .ok_or(AotError::Bad {
            what: "graph",
            message: "no function".into(),
        })?
        .clone();
    let count: [u8; 8] = section("kernels")?.try_into().map_err(|_| AotError::Bad {
        what: "kernel count",
        message: "not 8 bytes".into(),
    })?;
    let count = u64::from_le_bytes(count);
    let object = section("object")?;
    let exe = Executable::with_code(&g, opts, &mut |kernels| {
        if kernels.len() as u64 != count {
            return Err(crate::ExecError::Codegen(format!(
                "the graph lowers to {} kernels, the artifact's code has {count}",
                kernels.len()
            )));
        }
        let image = codegen::aot::Image::load(object, kernels.len())
            .map_err(|e| crate::ExecError::Codegen(e.to_string()))?;
        Ok(Box::new(image))
    })?;
    Ok(exe)
}

/// Whether `bytes` look like an artifact (they start with its magic).
pub fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(artifact::MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_example_round_trips_and_damage_is_an_error() {
        let text = include_str!("../examples/mlp.kir");
        let g = crate::parse_graph(text).unwrap();
        let opts = CompileOptions::default();
        let bytes = compile(&g, &opts).unwrap();
        assert_eq!(
            bytes,
            compile(&g, &opts).unwrap(),
            "compiling twice differs"
        );
        let exe = load(&bytes, &opts).unwrap();
        let jit = Executable::new(&g, &opts).unwrap();
        let x = crate::Rng::new(3).tensor(crate::DType::F32, &[5, 4]);
        let a = exe.run(std::slice::from_ref(&x)).unwrap();
        let b = jit.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(a, b);
        for at in (0..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(load(&bad, &opts).is_err(), "a flip at {at} loaded");
        }
        assert!(load(&bytes[..bytes.len() - 1], &opts).is_err());
    }
}
