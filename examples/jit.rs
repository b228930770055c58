//! JIT from Rust: import the shipped ONNX classifier from bytes, compile it to native code,
//! run it, and compare with the reference interpreter. `cargo run --release --example jit`.

use std::collections::HashMap;

/// Named output tensors.
pub type Outputs = Vec<(String, kiln::Tensor)>;

/// Compiles the classifier and returns (compiled, interpreted) outputs on its example inputs.
pub fn run() -> Result<(Outputs, Outputs), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let bytes = std::fs::read(format!("{dir}/classifier.onnx"))?;
    let graph = kiln::onnx::import(&bytes, Default::default(), HashMap::new())?;
    // Optimize and compile once; the executable is Send + Sync and runs any batch size.
    let exe = kiln::compile(&graph, &Default::default())?;
    let (native, interpreted) = exe.coverage();
    println!(
        "{native} kernels compiled, {} nodes interpreted",
        interpreted.len()
    );
    let inputs = kiln::npz::read_npz(&std::fs::read(format!("{dir}/classifier_inputs.npz"))?)?;
    let got = kiln::execute(&exe, &inputs, &HashMap::new())?;
    let want = kiln::interpret(&graph, &inputs, &HashMap::new())?;
    Ok((got, want))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (got, want) = run()?;
    for ((name, t), (_, w)) in got.iter().zip(&want) {
        println!("{name}: {} = {}", t.ty(), kiln::format::head(t, 6));
        let tol = kiln::onnx::Tolerance {
            rtol: 1e-4,
            atol: 1e-5,
        };
        if let Some(why) = kiln::onnx::mismatch(t, w, tol) {
            return Err(format!("{name} differs from the interpreter: {why}").into());
        }
    }
    println!("compiled outputs match the reference interpreter");
    Ok(())
}
