//! ONNX sequences resolved at import: SplitToSequence, SequenceConstruct/Insert/At/Erase/
//! Length and ConcatFromSequence become the tensors they select or join; a sequence where a
//! tensor is needed is a clear error.

mod common;

use common::onnx::{model, node, vi};
use kiln::frontends::onnx::proto::*;
use kiln::{Model, Tensor};

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

fn run(bytes: &[u8], x: Tensor) -> Vec<(String, Tensor)> {
    let m = Model::from_onnx(bytes, Default::default(), Default::default()).unwrap();
    m.run(&[("x".into(), x)]).unwrap()
}

#[test]
fn sequences_split_pick_grow_and_join() {
    let (f, i64_) = (data_type::FLOAT, data_type::INT64);
    let pos = TensorProto {
        name: "minus_one".into(),
        dims: vec![],
        data_type: i64_,
        int64_data: vec![-1],
        ..Default::default()
    };
    let bytes = model(
        vec![
            // x: [3, 2] -> rows as a sequence of [2] tensors.
            node(
                "SplitToSequence",
                "split",
                &["x"],
                &["rows"],
                vec![int_attr("keepdims", 0)],
            ),
            node(
                "SequenceAt",
                "last",
                &["rows", "minus_one"],
                &["last"],
                vec![],
            ),
            node(
                "SequenceInsert",
                "grow",
                &["rows", "last"],
                &["more"],
                vec![],
            ),
            node(
                "SequenceErase",
                "drop",
                &["more", "minus_one"],
                &["same"],
                vec![],
            ),
            node(
                "SequenceInsert",
                "again",
                &["same", "last"],
                &["four"],
                vec![],
            ),
            node("SequenceLength", "len", &["four"], &["n"], vec![]),
            node(
                "ConcatFromSequence",
                "stack",
                &["four"],
                &["y"],
                vec![int_attr("axis", 0), int_attr("new_axis", 1)],
            ),
        ],
        vec![vi("x", f, &[3, 2])],
        vec![vi("y", f, &[4, 2]), vi("n", i64_, &[])],
        vec![pos],
        17,
    );
    let x = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let out = run(&bytes, x);
    assert_eq!(out[0].1.shape(), &[4, 2]);
    assert_eq!(
        out[0].1.as_slice::<f32>().unwrap(),
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 6.0]
    );
    assert_eq!(out[1].1.as_slice::<i64>().unwrap(), &[4]);
}

#[test]
fn a_sequence_where_a_tensor_is_needed_is_an_error() {
    let f = data_type::FLOAT;
    let bytes = model(
        vec![
            node("SplitToSequence", "split", &["x"], &["rows"], vec![]),
            node("Relu", "relu", &["rows"], &["y"], vec![]),
        ],
        vec![vi("x", f, &[3, 2])],
        vec![vi("y", f, &[3, 2])],
        vec![],
        17,
    );
    let e = Model::from_onnx(&bytes, Default::default(), Default::default())
        .unwrap()
        .symbolic()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Relu") && e.contains("sequence"), "{e}");
}
