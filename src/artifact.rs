//! Compiled models as files (`.kiln`): the driver's face of [`runtime::aot`], which compiles
//! a graph's kernels into an artifact and loads one without the compiler.

pub use runtime::aot::{is_artifact, AotError};

use crate::{CompileOptions, Error, Executable, Graph};

/// Compiles `g` (already optimized, as the executable will run it) into artifact bytes for
/// `target`: `host` (this machine), an x86-64 level (`x86-64-v3`) or a CPU Cranelift knows
/// (`skylake`). The same graph, target and kiln give the same bytes.
pub fn compile(g: &Graph, opts: &CompileOptions, target: &str) -> Result<Vec<u8>, Error> {
    Ok(runtime::aot::compile(g, opts, target)?)
}

/// Makes an executable from artifact bytes it keeps (a memory map of a `.kiln` file, say:
/// `Arc::new(map)`): the weights are used in place, nothing is copied.
pub fn load_shared(
    bytes: runtime::exec::SharedBytes,
    opts: &CompileOptions,
) -> Result<Executable, Error> {
    Ok(runtime::aot::load_shared(bytes, opts)?)
}

/// The kernels' relocatable object file inside artifact bytes (`kiln_kernel_{i}` for kernel
/// `i`).
pub fn object_code(bytes: &[u8]) -> Result<&[u8], Error> {
    let a = runtime::artifact::read(bytes).map_err(AotError::from)?;
    Ok(a.section("object")
        .ok_or(AotError::MissingSection("object"))?)
}

/// Makes an executable from artifact bytes, checking the container, the kiln version, the
/// target and the CPU's features before any of its code is mapped.
pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, Error> {
    Ok(runtime::aot::load(bytes, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_example_round_trips_without_the_compiler_and_damage_is_an_error() {
        let text = include_str!("../examples/mlp.kir");
        let g = crate::parse_graph(text).unwrap();
        let opts = CompileOptions::default();
        let bytes = compile(&g, &opts, "host").unwrap();
        assert_eq!(
            bytes,
            compile(&g, &opts, "host").unwrap(),
            "compiling twice differs"
        );
        // Loading never runs the compiler (it counts per thread; the JIT counts, to show it).
        let before = codegen::jit::compilations_on_this_thread();
        let exe = load(&bytes, &opts).unwrap();
        assert_eq!(codegen::jit::compilations_on_this_thread(), before);
        let jit = Executable::new(&g, &opts).unwrap();
        assert_eq!(codegen::jit::compilations_on_this_thread(), before + 1);
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
