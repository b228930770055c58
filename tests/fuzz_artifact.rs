//! Robustness of loading `.kiln` artifacts: byte-level mutations of real artifacts (the MLP
//! example, the shipped classifier, and a 4-bit product whose dequantized weight loading
//! remakes), with the checksum recomputed half of the time so the
//! checks behind it — header, saved plan, weights, object file — see the damage. Loading
//! must fail with an error or succeed; it must never panic or crash. (Mutated code is never
//! run: an artifact's checksum guards its code, and this test forges checksums.) Long run:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_artifact`.

use proptest::prelude::*;

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mlp =
            kiln::parse_graph(&std::fs::read_to_string(root.join("examples/mlp.kir")).unwrap())
                .unwrap();
        let onnx = std::fs::read(root.join("examples/classifier.onnx")).unwrap();
        let classifier = kiln::onnx::import(&onnx, Default::default(), Default::default()).unwrap();
        [mlp, classifier, four_bit()]
            .iter()
            .map(|g| {
                let o = kiln::optimize(g, None, &Default::default()).unwrap();
                kiln::artifact::compile(&o, &Default::default(), "host").unwrap()
            })
            .collect()
    })
}

/// A 4-bit product of a small constant weight: its artifact remakes the dequantized weight
/// on loading (a derived constant) from the nibbles it stores.
fn four_bit() -> kiln::Graph {
    let (n, k) = (24, 64);
    let rows = |v: Vec<String>, w: usize| -> String {
        let r: Vec<String> = v.chunks(w).map(|c| format!("[{}]", c.join(", "))).collect();
        format!("[{}]", r.join(", "))
    };
    let w = rows(
        (0..n * k / 2).map(|i| (i * 37 % 256).to_string()).collect(),
        k / 2,
    );
    let s = rows((0..n * 2).map(|i| format!("0.{}", 1 + i % 9)).collect(), 2);
    let z = rows((0..n * 2).map(|i| (i % 16).to_string()).collect(), 2);
    let text = format!(
        r#"
func @four_bit {{
  %x = param {{name="x"}} : f32[8, {k}]
  %w = constant {{value={w}}} : u8[{n}, {}]
  %s = constant {{value={s}}} : f32[{n}, 2]
  %z = constant {{value={z}}} : f32[{n}, 2]
  %y = qdot4 %x, %w, %s, %z {{block=32}} : f32[8, {n}]
  return %y
}}
"#,
        k / 2
    );
    kiln::parse_graph(&text).unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, byte: u8 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, n: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Mutation::Remove { at, n }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len().max(1);
    if bytes.is_empty() && !matches!(m, Mutation::Insert { .. }) {
        return;
    }
    match m {
        Mutation::Flip { at, bits } => bytes[at % n] ^= bits,
        Mutation::Set { at, byte } => bytes[at % n] = *byte,
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Insert { at, bytes: b } => {
            let at = at % n;
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove { at, n: k } => {
            let at = at % n;
            let end = (at + k).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

proptest! {
    // 300 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_artifacts_load_or_fail_cleanly(
        which in 0..2usize,
        muts in prop::collection::vec(mutation(), 1..4),
        reseal in any::<bool>(),
    ) {
        let mut bytes = corpus()[which].clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        if reseal {
            kiln::runtime::artifact::seal(&mut bytes);
        } else if bytes != corpus()[which] {
            // The checksum catches any change it was not recomputed for.
            prop_assert!(kiln::artifact::load(&bytes, &Default::default()).is_err());
        }
        let _ = kiln::artifact::load(&bytes, &Default::default());
    }
}
