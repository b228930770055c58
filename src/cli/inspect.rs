//! `kiln inspect`: what an ONNX model or a .kiln artifact holds, and for an artifact whether
//! this machine can run it.

use std::path::Path;

use crate::load::{self, read, Kind};
use crate::Failure;

pub fn inspect(path: &Path) -> Result<(), Failure> {
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
