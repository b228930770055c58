//! ONNX sequences resolved at import: SplitToSequence, SequenceConstruct/Insert/At/Erase/
//! Length and ConcatFromSequence become the tensors they select or join; a sequence where a
//! tensor is needed is a clear error. Sequence and optional inputs and outputs travel as named
//! tensors (`s[0]`, `s[1]`, …), and a model specializes on the lengths a run gives.

mod common;

use common::onnx::{int_attr, model, node, vi};
use kiln::frontends::onnx::proto::*;
use kiln::frontends::onnx::{decode_value, Kind};
use kiln::{Model, Tensor};
use prost::Message;

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

/// A value type wrapping a tensor type: `seq` a sequence of it, else an optional.
fn wrapped(name: &str, elem: i32, dims: &[i64], seq: bool) -> ValueInfoProto {
    let inner = vi(name, elem, dims).r#type.map(Box::new);
    let value = if seq {
        TypeValue::SequenceType(SequenceTypeProto { elem_type: inner })
    } else {
        TypeValue::OptionalType(OptionalTypeProto { elem_type: inner })
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(value),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn row(v: &[f32]) -> Tensor {
    Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
}

/// `out` = `s` with `t` appended, `has` = whether `o` holds a value, `maybe` = an optional
/// holding `t` doubled.
fn interface_model() -> Vec<u8> {
    let (f, b) = (data_type::FLOAT, data_type::BOOL);
    model(
        vec![
            node("SequenceInsert", "grow", &["s", "t"], &["out"], vec![]),
            node("OptionalHasElement", "has", &["o"], &["has"], vec![]),
            node("Add", "double", &["t", "t"], &["tt"], vec![]),
            node("Optional", "wrap", &["tt"], &["maybe"], vec![]),
        ],
        vec![
            wrapped("s", f, &[-1], true),
            vi("t", f, &[2]),
            wrapped("o", f, &[3], false),
        ],
        vec![
            wrapped("out", f, &[-1], true),
            vi("has", b, &[]),
            wrapped("maybe", f, &[2], false),
        ],
        vec![],
        18,
    )
}

#[test]
fn sequences_and_optionals_cross_the_interface_as_named_tensors() {
    let m = Model::from_onnx(&interface_model(), Default::default(), Default::default()).unwrap();
    assert!(
        m.symbolic().is_err(),
        "a sequence input's length is a run's"
    );
    assert!(m.takes("s[3]") && m.takes("o") && !m.takes("s") && !m.takes("t[0]"));
    let t = ("t".to_string(), row(&[7.0, 8.0]));
    let s = |i: usize, v: &[f32]| (format!("s[{i}]"), row(v));
    let names = |out: &[(String, Tensor)]| out.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();

    let out = m
        .run(&[s(0, &[1.0]), s(1, &[2.0, 3.0, 4.0]), t.clone()])
        .unwrap();
    assert_eq!(names(&out), ["out[0]", "out[1]", "out[2]", "has", "maybe"]);
    assert_eq!(out[1].1.as_slice::<f32>().unwrap(), &[2.0, 3.0, 4.0]);
    assert_eq!(out[2].1.as_slice::<f32>().unwrap(), &[7.0, 8.0]);
    assert_eq!(out[3].1.as_slice::<bool>().unwrap(), &[false]);
    assert_eq!(out[4].1.as_slice::<f32>().unwrap(), &[14.0, 16.0]);
    assert_eq!(m.specializations(), 1);

    // The same lengths (other element shapes, other values) reuse the specialization; an
    // optional that holds a value, or another length, makes a new one.
    let out = m
        .run(&[s(0, &[5.0, 6.0]), s(1, &[9.0]), t.clone()])
        .unwrap();
    assert_eq!(out[1].1.as_slice::<f32>().unwrap(), &[9.0]);
    let o = ("o".to_string(), row(&[0.0; 3]));
    let out = m.run(&[s(0, &[1.0]), s(1, &[2.0]), t.clone(), o]).unwrap();
    assert_eq!(out[3].1.as_slice::<bool>().unwrap(), &[true]);
    let out = m.run(std::slice::from_ref(&t)).unwrap();
    assert_eq!(names(&out), ["out[0]", "has", "maybe"]);
    assert_eq!(m.specializations(), 3);

    // The interpreter agrees.
    let i = m.interpret(&[s(0, &[1.0]), t.clone()]).unwrap();
    assert_eq!(names(&i), ["out[0]", "out[1]", "has", "maybe"]);
    assert_eq!(i[1].1.as_slice::<f32>().unwrap(), &[7.0, 8.0]);
}

#[test]
fn a_sequence_tensor_of_the_wrong_rank_names_itself() {
    let m = Model::from_onnx(&interface_model(), Default::default(), Default::default()).unwrap();
    let bad = Tensor::from_vec(vec![1, 1], vec![1.0f32]).unwrap();
    let t = ("t".to_string(), row(&[7.0, 8.0]));
    let e = m.run(&[("s[0]".into(), bad), t]).unwrap_err().to_string();
    assert!(e.contains("s[0]"), "{e}");
}

/// An f32 vector as an ONNX TensorProto.
fn tensor(v: &[f32]) -> TensorProto {
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: data_type::FLOAT,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

/// A serialized sequence of two tensors, `[1]` and `[2, 3]`.
fn two_tensors() -> SequenceProto {
    SequenceProto {
        elem_type: 1,
        tensor_values: vec![tensor(&[1.0]), tensor(&[2.0, 3.0])],
        ..Default::default()
    }
}

#[test]
fn serialized_sequences_and_optionals_decode_to_named_tensors() {
    let seq = two_tensors();
    let got = decode_value(&seq.encode_to_vec(), &Kind::Sequence, "xs").unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0, "xs[1]");
    assert_eq!(got[1].1.as_slice::<f32>().unwrap(), &[2.0, 3.0]);
    let opt = Kind::Optional(Box::new(Kind::Tensor));
    let none = OptionalProto::default();
    assert!(decode_value(&none.encode_to_vec(), &opt, "o")
        .unwrap()
        .is_empty());
    let some = OptionalProto {
        elem_type: 1,
        tensor_value: Some(tensor(&[4.0])),
        ..Default::default()
    };
    let got = decode_value(&some.encode_to_vec(), &opt, "o").unwrap();
    assert_eq!(got[0].0, "o");
    // A sequence of sequences is refused, not misread.
    let nested = SequenceProto {
        elem_type: 3,
        sequence_values: vec![seq],
        ..Default::default()
    };
    let e = decode_value(&nested.encode_to_vec(), &Kind::Sequence, "xs").unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

/// A sequence of f32 tensors whose element type declares no shape.
fn unshaped_seq(name: &str) -> ValueInfoProto {
    let mut v = wrapped(name, data_type::FLOAT, &[], true);
    if let Some(TypeValue::SequenceType(s)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        if let Some(TypeValue::TensorType(t)) = s.elem_type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
    v
}

#[test]
fn sequence_tensors_without_declared_shapes_specialize_on_their_shapes() {
    let bytes = model(
        vec![node(
            "ConcatFromSequence",
            "cat",
            &["s"],
            &["y"],
            vec![int_attr("axis", 0)],
        )],
        vec![unshaped_seq("s")],
        vec![vi("y", data_type::FLOAT, &[-1])],
        vec![],
        17,
    );
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    // The same length twice, with other shapes: never the first run's graph again.
    for n in [2, 3, 2] {
        let out = m
            .run(&[
                ("s[0]".into(), row(&vec![1.0; n])),
                ("s[1]".into(), row(&[5.0])),
            ])
            .unwrap();
        assert_eq!(out[0].1.shape(), &[n + 1]);
    }
}

#[test]
fn gaps_and_colliding_names_are_errors() {
    let m = Model::from_onnx(&interface_model(), Default::default(), Default::default()).unwrap();
    let t = ("t".to_string(), row(&[7.0, 8.0]));
    let e = m
        .run(&[
            ("s[0]".into(), row(&[1.0])),
            ("s[2]".into(), row(&[1.0])),
            t,
        ])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`s[2]`") && e.contains("without `s[1]`"), "{e}");
    assert!(!m.takes("s[01]") && !m.takes("s[+1]"));
    // A tensor input named like an element of a sequence input.
    let f = data_type::FLOAT;
    let bytes = model(
        vec![node(
            "SequenceInsert",
            "grow",
            &["s", "s[0]"],
            &["out"],
            vec![],
        )],
        vec![wrapped("s", f, &[-1], true), vi("s[0]", f, &[2])],
        vec![wrapped("out", f, &[-1], true)],
        vec![],
        17,
    );
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    let e = m
        .run(&[("s[0]".into(), row(&[1.0, 2.0]))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("two inputs travel as `s[0]`"), "{e}");
}

#[test]
fn the_cli_reads_sequences_from_onnx_test_data() {
    let dir = tempfile::tempdir().unwrap();
    let seq = two_tensors();
    let model_path = dir.path().join("model.onnx");
    std::fs::write(&model_path, interface_model()).unwrap();
    let data = dir.path().join("test_data_set_0");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("input_0.pb"), seq.encode_to_vec()).unwrap();
    std::fs::write(data.join("input_1.pb"), tensor(&[4.0, 5.0]).encode_to_vec()).unwrap();
    std::fs::write(
        data.join("input_2.pb"),
        OptionalProto::default().encode_to_vec(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "run",
            model_path.to_str().unwrap(),
            "--inputs",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        so.contains("out[2]: f32[2] = [4, 5]") && so.contains("has: bool[] = [false]"),
        "{so}"
    );
}
