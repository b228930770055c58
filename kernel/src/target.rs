//! The machine code runs on: the host's target triple and its CPU features, by backend-neutral
//! names as artifacts record them (`avx2`, `fma`, `sse4.1`, ...), so a loader can check what a
//! piece of compiled code assumes without a code generator.

/// What lowering assumes of the machine, in backend-neutral terms: the vectors loops are
/// marked for and the working-block size blocked loops are cut to. One value per backend and
/// target instead of constants scattered through lowering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Lanes of the vectors `Mark::Vector` loops run in (f32 lanes).
    pub vector_lanes: u32,
    /// Bytes of cache a core keeps one block of a blocked loop in (a conv's row blocks with
    /// their columns).
    pub block_bytes: usize,
}

impl Machine {
    /// What the Cranelift backend targets everywhere: 128-bit vectors (4 f32 lanes, which
    /// Cranelift's SIMD types give on every x86-64 level) and 512 KiB blocks (a core's L2).
    pub const CRANELIFT: Machine = Machine {
        vector_lanes: 4,
        block_bytes: 512 << 10,
    };
}

/// The target triple of this build (`x86_64-unknown-linux-gnu`, ...): code compiled for another
/// does not load here.
pub fn host_triple() -> String {
    target_lexicon::HOST.to_string()
}

/// The CPU features code may require, by backend-neutral names (Rust's `target_feature`
/// names, which LLVM shares): what artifacts record and [`missing_features`] checks.
pub const FEATURES: &[&str] = &[
    "sse3",
    "ssse3",
    "cmpxchg16b",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "bmi1",
    "bmi2",
    "lzcnt",
    "avxvnni",
    "avx512f",
    "avx512dq",
    "avx512vl",
    "avx512bitalg",
    "avx512vbmi",
    "avx512vnni",
];

/// Of `required` CPU features (names from [`FEATURES`]), those this CPU lacks; unknown names
/// count as lacking.
pub fn missing_features(required: &[String]) -> Vec<String> {
    required.iter().filter(|f| !host_has(f)).cloned().collect()
}

#[cfg(target_arch = "x86_64")]
fn host_has(feature: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match feature {
        "sse3" => has!("sse3"),
        "ssse3" => has!("ssse3"),
        "cmpxchg16b" => has!("cmpxchg16b"),
        "sse4.1" => has!("sse4.1"),
        "sse4.2" => has!("sse4.2"),
        "popcnt" => has!("popcnt"),
        "avx" => has!("avx"),
        "avx2" => has!("avx2"),
        "fma" => has!("fma"),
        "bmi1" => has!("bmi1"),
        "bmi2" => has!("bmi2"),
        "lzcnt" => has!("lzcnt"),
        "avxvnni" => has!("avxvnni"),
        "avx512f" => has!("avx512f"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        "avx512bitalg" => has!("avx512bitalg"),
        "avx512vbmi" => has!("avx512vbmi"),
        "avx512vnni" => has!("avx512vnni"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has(_: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_this_cpu_lacks_are_named() {
        let missing = missing_features(&["sse3".into(), "teleport".into(), "has_sse3".into()]);
        assert!(missing.contains(&"teleport".to_string()));
        // Cranelift's names are not ours.
        assert!(missing.contains(&"has_sse3".to_string()));
        if cfg!(target_arch = "x86_64") {
            assert!(!missing.contains(&"sse3".to_string()));
        }
    }
}
