//! Matrix product throughput: a 1024×1024×1024 f32 `dot` compiled by kiln (default threads),
//! reported as time per product; GFLOP/s = 2·1024³ / time. `cargo bench --bench matmul`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn matmul(c: &mut Criterion) {
    let text = r#"
func @matmul {
  %0 = param {name="a"} : f32[1024, 1024]
  %1 = param {name="b"} : f32[1024, 1024]
  %2 = dot %0, %1 {lhs_contract=[1], rhs_contract=[0]} : f32[1024, 1024]
  return %2
}
"#;
    let g = kiln::parse_graph(text).expect("parses");
    let exe = kiln::compile(&g, &Default::default()).expect("compiles");
    let a = kiln::Rng::new(1).tensor(kiln::DType::F32, &[1024, 1024]);
    let b = kiln::Rng::new(2).tensor(kiln::DType::F32, &[1024, 1024]);
    let inputs = [a, b];
    let mut group = c.benchmark_group("matmul");
    group.sample_size(20);
    group.throughput(Throughput::Elements(2 * 1024 * 1024 * 1024));
    group.bench_function("f32_1024", |bench| {
        bench.iter(|| exe.run(&inputs).expect("runs"))
    });
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
