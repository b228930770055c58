//! Property: printing a random well-typed graph and parsing it back gives the same graph, and
//! printing is a fixed point.

mod common;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(300)))]

    #[test]
    fn parse_of_print_is_identity(seed in any::<u64>(), size in 1usize..40) {
        let g = common::random_graph(seed, size);
        let text = kiln::print_graph(&g);
        let back = kiln::parse_graph(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(back == g, "round trip changed the graph:\n{}", text);
        prop_assert_eq!(kiln::print_graph(&back), text);
        prop_assert!(kiln::verify(&back).is_ok());
    }
}

#[test]
fn generator_covers_many_ops() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let g = common::random_graph(seed, 30);
        for id in g.node_ids() {
            seen.insert(g.node(id).op().mnemonic());
        }
    }
    assert!(
        seen.len() >= 52,
        "only {} ops generated: {seen:?}",
        seen.len()
    );
}
