//! The kernel transforms as a table, like the graph passes (`passes::PASSES`): what a
//! lowered kernel goes through before a backend compiles it, each with a name the CLI's
//! `--print-after` takes and a summary `kiln passes` lists. [`PIPELINE`] is the order lowering
//! applies them in.

use crate::loops::Kernel;

/// One kernel transform: it keeps what the kernel computes.
pub struct Transform {
    pub name: &'static str,
    pub summary: &'static str,
    pub run: fn(&mut Kernel),
}

/// Every kernel transform, by name.
pub static TRANSFORMS: &[Transform] = &[
    Transform {
        name: "fuse-loops",
        summary: "fuse loop nests where each shared iteration reads only what the same \
                  iteration wrote (a row's producer and consumer in one loop)",
        run: crate::stages::fuse,
    },
    Transform {
        name: "shrink-scratch",
        summary: "shrink scratch that lives within one iteration of a serial loop to one \
                  block per parallel iteration (a row instead of a matrix)",
        run: crate::stages::shrink_scratch,
    },
    Transform {
        name: "row-calls",
        summary: "loops that are a row's f32 maximum or minimum, its f64 sum (of squares), \
                  exp(x - s) along it, or a quantizer, dequantizer or quantize-dequantize \
                  pair of it become calls of the library routines (row_max, row_sum_f64, \
                  row_sumsq_f64, row_exp_sub, row_quantize, row_quantize_s8, row_dequantize, row_qdq, ...), \
                  a loop over div/rem of its variable split into rows first; a row's sigmoid \
                  or tanh in a vector loop is computed first (row_act)",
        run: crate::recognize::row_calls,
    },
];

/// The order lowering applies the transforms in.
pub static PIPELINE: &[&str] = &["fuse-loops", "shrink-scratch", "row-calls"];

/// The transform named `name`.
pub fn transform(name: &str) -> Option<&'static Transform> {
    TRANSFORMS.iter().find(|t| t.name == name)
}

/// Applies [`PIPELINE`] to `k`, calling `after` with each transform and the kernel it left.
pub fn run(k: &mut Kernel, after: &mut dyn FnMut(&Transform, &Kernel)) {
    for name in PIPELINE {
        let t = transform(name).expect("the pipeline names transforms of the table");
        (t.run)(k);
        after(t, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_names_transforms_of_the_table_and_runs_them_in_order() {
        assert!(PIPELINE.iter().all(|n| transform(n).is_some()));
        let mut k = crate::parse::parse_kernel(
            "kernel @k(in x: f32[8], out y: f32[8], scratch t: f32[8]) {
  for v0 in 0..8 {
    t[v0] = exp(x[v0])
  }
  for v1 in 0..8 {
    y[v1] = neg(t[v1])
  }
}",
        )
        .unwrap();
        let mut seen = Vec::new();
        run(&mut k, &mut |t, k| seen.push((t.name, k.to_string())));
        assert_eq!(seen.len(), PIPELINE.len());
        assert_eq!(seen[0].0, "fuse-loops");
        // Fused into one loop, and the scratch shrunk to the one element an iteration uses.
        assert_eq!(
            seen[1].1,
            "kernel @k(in x: f32[8], out y: f32[8], scratch t: f32[1]) {
  for v0 in 0..8 {
    t[0] = exp(x[v0])
    y[v0] = neg(t[0])
  }
}"
        );
    }
}
