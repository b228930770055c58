//! Compile-time benchmark: the default optimization pipeline on the shared models (llama_tiny
//! first: the budget is 2 s in a release build). `cargo bench --bench pipeline`; skips, saying
//! so, when `../shared/models` is missing.

use std::collections::HashMap;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};

fn models() -> Option<PathBuf> {
    let root = std::env::var_os("KILN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("models");
    if root.is_dir() {
        Some(root)
    } else {
        eprintln!("SKIPPED: {} is missing", root.display());
        None
    }
}

fn pipeline(c: &mut Criterion) {
    let Some(root) = models() else { return };
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for name in ["llama_tiny", "bert_tiny", "vit_tiny", "lstm"] {
        let Ok(bytes) = std::fs::read(root.join(name).join("model.onnx")) else {
            continue;
        };
        let g = kiln::onnx::import(&bytes, Default::default(), HashMap::new())
            .expect("the shared models import");
        let mut opts = kiln::pass_options(&HashMap::new());
        // What a user's release build does: no verification between passes.
        opts.verify_each = false;
        let list = kiln::passes::pass_list(None).expect("the default pipeline");
        group.bench_function(name, |b| {
            b.iter(|| kiln::passes::run(&g, &list, &opts, &mut |_, _| {}).expect("optimizes"))
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
