//! The machine code runs on: the host's target triple and its CPU features, named as
//! artifacts record them (`has_avx2`, `has_fma`, ...), so a loader can check what a piece of
//! compiled code assumes without a code generator.

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

/// Of `required` CPU features (Cranelift's names, `has_avx2`, ...), those this CPU lacks;
/// unknown names count as lacking.
pub fn missing_features(required: &[String]) -> Vec<String> {
    required.iter().filter(|f| !host_has(f)).cloned().collect()
}

#[cfg(target_arch = "x86_64")]
fn host_has(feature: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match feature {
        "has_sse3" => has!("sse3"),
        "has_ssse3" => has!("ssse3"),
        "has_cmpxchg16b" => has!("cmpxchg16b"),
        "has_sse41" => has!("sse4.1"),
        "has_sse42" => has!("sse4.2"),
        "has_avx" => has!("avx"),
        "has_avx2" => has!("avx2"),
        "has_fma" => has!("fma"),
        "has_avx_vnni" => has!("avxvnni"),
        "has_avx512bitalg" => has!("avx512bitalg"),
        "has_avx512dq" => has!("avx512dq"),
        "has_avx512vl" => has!("avx512vl"),
        "has_avx512vbmi" => has!("avx512vbmi"),
        "has_avx512f" => has!("avx512f"),
        "has_avx512vnni" => has!("avx512vnni"),
        "has_popcnt" => has!("popcnt"),
        "has_bmi1" => has!("bmi1"),
        "has_bmi2" => has!("bmi2"),
        "has_lzcnt" => has!("lzcnt"),
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
        let missing = missing_features(&["has_sse3".into(), "has_teleport".into()]);
        assert!(missing.contains(&"has_teleport".to_string()));
        if cfg!(target_arch = "x86_64") {
            assert!(!missing.contains(&"has_sse3".to_string()));
        }
    }
}
