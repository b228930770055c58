//! Builds a multi-head self-attention block with the Rust builder API and runs it on the
//! reference interpreter; the sequence length is symbolic.

use kiln::{shape, Builder, DType, Dim, Graph, Rng};

/// softmax(QKᵀ/√d)·V over `heads` heads, with input and output projections.
pub fn build(d_model: usize, heads: usize) -> kiln::Result<Graph> {
    let (dh, mut rng) = (d_model / heads, Rng::new(7));
    let mut b = Builder::new("attention");
    let x = b.param("x", DType::F32, shape!["seq", d_model])?;
    let split = kiln::Shape::new(vec![Dim::sym("seq"), heads.into(), dh.into()]);
    let mut project = |b: &mut Builder, name: &str| -> kiln::Result<kiln::Value> {
        let w = b.named_constant(name, rng.weights(&[d_model, d_model], 0.3))?;
        let y = b.matmul(x, w)?;
        let y = b.reshape(y, split.clone())?;
        Ok(b.transpose(y, &[1, 0, 2])?)
    };
    let (q, k, v) = (
        project(&mut b, "wq")?,
        project(&mut b, "wk")?,
        project(&mut b, "wv")?,
    );
    let kt = b.transpose_last2(k)?;
    let scores = b.matmul(q, kt)?;
    let scores = b.scale(scores, 1.0 / (dh as f64).sqrt())?;
    let p = b.softmax(scores, -1)?;
    let o = b.matmul(p, v)?;
    let o = b.transpose(o, &[1, 0, 2])?;
    let o = b.reshape(o, shape!["seq", d_model])?;
    let wo = b.named_constant("wo", rng.weights(&[d_model, d_model], 0.3))?;
    let y = b.matmul(o, wo)?;
    b.output("y", y)?;
    Ok(b.finish()?)
}

fn main() -> kiln::Result<()> {
    let g = build(8, 2)?;
    print!("{}", kiln::print_graph(&g));
    for seq in [3usize, 5] {
        let x = Rng::new(seq as u64).tensor(DType::F32, &[seq, 8]);
        let out = kiln::interpret(&g, &[("x".into(), x)], &Default::default())?;
        println!("; seq {seq}: y[0] = {}", kiln::format::head(&out[0].1, 8));
    }
    Ok(())
}
