//! Builds a small MLP classifier with the Rust builder API and runs it on the reference
//! interpreter at two batch sizes (the batch dimension is symbolic).

use kiln::{shape, Builder, DType, Graph, Rng};

/// A 4 → 16 → 3 MLP with ReLU and softmax over a symbolic batch.
pub fn build() -> kiln::Result<Graph> {
    let mut rng = Rng::new(42);
    let mut b = Builder::new("mlp");
    let x = b.param("x", DType::F32, shape!["batch", 4])?;
    let w1 = b.named_constant("w1", rng.weights(&[4, 16], 0.5))?;
    let b1 = b.named_constant("b1", rng.weights(&[16], 0.1))?;
    let w2 = b.named_constant("w2", rng.weights(&[16, 3], 0.25))?;
    let b2 = b.named_constant("b2", rng.weights(&[3], 0.1))?;
    let h = b.matmul(x, w1)?;
    let h = b.add(h, b1)?;
    let h = b.relu(h)?;
    let logits = b.matmul(h, w2)?;
    let logits = b.add(logits, b2)?;
    let probs = b.softmax(logits, -1)?;
    b.output("probs", probs)?;
    Ok(b.finish()?)
}

fn main() -> kiln::Result<()> {
    let g = build()?;
    print!("{}", kiln::print_graph(&g));
    for batch in [1usize, 7] {
        let x = Rng::new(batch as u64).tensor(DType::F32, &[batch, 4]);
        let out = kiln::interpret(&g, &[("x".into(), x)], &Default::default())?;
        println!(
            "; batch {batch}: probs = {}",
            kiln::format::values(&out[0].1)
        );
    }
    Ok(())
}
