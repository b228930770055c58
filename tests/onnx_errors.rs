//! Malformed ONNX input is an `ImportError` naming the node and op, never a panic: truncated
//! and garbled protobuf, unknown data types, missing values, wrong attribute types, cycles,
//! unsupported opsets, unusable quantization parameters (scales, zero points, blocks, packed
//! lengths); and the CLI reports them with a non-zero exit.

use std::collections::HashMap;

mod common;

use common::onnx::{floats, int_attr, ints_attr, model, node, raw, vi};
use kiln::frontends::onnx::proto::*;
use prost::Message;

fn import_err(bytes: &[u8]) -> String {
    match kiln::onnx::import(bytes, Default::default(), HashMap::new()) {
        Ok(_) => panic!("imported a malformed model"),
        Err(e) => e.to_string(),
    }
}

/// A small valid model: y = transpose(x + w).
fn good() -> Vec<u8> {
    let w = TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: data_type::FLOAT,
        float_data: vec![1.0; 6],
        ..Default::default()
    };
    model(
        vec![
            node("Add", "add", &["x", "w"], &["s"], vec![]),
            node(
                "Transpose",
                "t",
                &["s"],
                &["y"],
                vec![ints_attr("perm", &[1, 0])],
            ),
        ],
        vec![vi("x", data_type::FLOAT, &[2, 3])],
        vec![vi("y", data_type::FLOAT, &[3, 2])],
        vec![w],
        17,
    )
}

#[test]
fn the_good_model_imports_and_runs() {
    let g = kiln::onnx::import(&good(), Default::default(), HashMap::new()).unwrap();
    let x = kiln::Tensor::from_vec(vec![2, 3], vec![0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let out = kiln::interpret(&g, &[("x".into(), x)], &HashMap::new()).unwrap();
    assert_eq!(
        out[0].1.as_slice::<f32>(),
        Some(&[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0][..])
    );
}

#[test]
fn truncated_and_garbled_bytes() {
    let bytes = good();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        // Any result but a panic; most cuts are invalid protobuf or an incomplete graph.
        let _ = kiln::onnx::import(&bytes[..cut], Default::default(), HashMap::new());
    }
    let e = import_err(&bytes[..bytes.len() / 2]);
    assert!(
        e.contains("not a valid ONNX model") || e.contains("used before") || e.contains("no graph"),
        "{e}"
    );
    assert!(import_err(b"\xff\xff\xff\xff garbage").contains("not a valid ONNX model"));
}

#[test]
fn unknown_dtype_in_an_initializer() {
    let w = TensorProto {
        name: "w".into(),
        dims: vec![1],
        data_type: 99,
        raw_data: vec![0; 4],
        ..Default::default()
    };
    let bytes = model(
        vec![node("Identity", "id", &["w"], &["y"], vec![])],
        vec![],
        vec![vi("y", 1, &[1])],
        vec![w],
        17,
    );
    assert_eq!(
        import_err(&bytes),
        "initializer `w`: data type UNDEFINED is not supported"
    );
}

#[test]
fn missing_value_names_the_node() {
    let bytes = model(
        vec![node("Add", "sum", &["x", "nowhere"], &["y"], vec![])],
        vec![vi("x", 1, &[2])],
        vec![vi("y", 1, &[2])],
        vec![],
        17,
    );
    assert_eq!(
        import_err(&bytes),
        "Add node \"sum\": value `nowhere` is used before it is defined"
    );
}

#[test]
fn wrong_attribute_type_names_the_node() {
    let perm = AttributeProto {
        name: "perm".into(),
        r#type: attr_type::FLOAT,
        f: 1.0,
        ..Default::default()
    };
    let bytes = model(
        vec![node("Transpose", "t", &["x"], &["y"], vec![perm])],
        vec![vi("x", 1, &[2, 3])],
        vec![vi("y", 1, &[3, 2])],
        vec![],
        17,
    );
    assert_eq!(
        import_err(&bytes),
        "Transpose node \"t\": attribute `perm` has type FLOAT, expected INTS"
    );
}

#[test]
fn a_cycle_is_an_error() {
    let bytes = model(
        vec![
            node("Relu", "a", &["b_out"], &["a_out"], vec![]),
            node("Relu", "b", &["a_out"], &["b_out"], vec![]),
        ],
        vec![],
        vec![vi("b_out", 1, &[2])],
        vec![],
        17,
    );
    assert_eq!(
        import_err(&bytes),
        "Relu node \"a\": value `b_out` is used before it is defined"
    );
}

#[test]
fn unsupported_ops_and_opsets() {
    for (op, name) in [("Gelu", "g"), ("FancyOp", "f")] {
        let bytes = model(
            vec![node(op, name, &["x"], &["y"], vec![])],
            vec![vi("x", 1, &[2])],
            vec![vi("y", 1, &[2])],
            vec![],
            17,
        );
        assert_eq!(
            import_err(&bytes),
            format!("{op} node \"{name}\": unsupported op {op} (opset 17)")
        );
    }
    let mut m = ModelProto::decode(good().as_slice()).unwrap();
    m.opset_import.clear();
    assert_eq!(
        import_err(&m.encode_to_vec()),
        "the model imports no ai.onnx opset"
    );
}

#[test]
fn a_type_error_in_an_imported_node_names_it() {
    let bytes = model(
        vec![node("Add", "bad_add", &["x", "z"], &["y"], vec![])],
        vec![vi("x", 1, &[2, 3]), vi("z", 1, &[4])],
        vec![vi("y", 1, &[2, 3])],
        vec![],
        17,
    );
    let e = import_err(&bytes);
    assert!(e.starts_with("Add node \"bad_add\": broadcast"), "{e}");
    assert!(e.contains("[2, 3] and [4] do not broadcast"), "{e}");
}

#[test]
fn the_cli_reports_import_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.onnx");
    std::fs::write(&p, &good()[..20]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", p.to_str().unwrap(), "--random-inputs"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.onnx: ") && !err.contains("panicked"),
        "{err}"
    );
    let p = dir.path().join("good.onnx");
    std::fs::write(&p, good()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["inspect", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("x: f32[2, 3]")
            && text.contains("y: f32[3, 2]")
            && text.contains("parameters: 6 elements"),
        "{text}"
    );
}

/// A compiled kernel that stops at a bounds check says which ONNX node and which value, as the
/// interpreter does (the kernel fuses the gather into a layer norm).
#[test]
fn compiled_kernel_errors_name_the_node_and_the_value() {
    let emb = TensorProto {
        name: "emb".into(),
        dims: vec![1000, 4],
        data_type: data_type::FLOAT,
        float_data: (0..4000).map(|i| i as f32 / 4000.0).collect(),
        ..Default::default()
    };
    let ones = TensorProto {
        name: "s".into(),
        dims: vec![4],
        data_type: data_type::FLOAT,
        float_data: vec![1.0; 4],
        ..Default::default()
    };
    let zeros = TensorProto {
        name: "b".into(),
        float_data: vec![0.0; 4],
        ..ones.clone()
    };
    let bytes = model(
        vec![
            node("Gather", "/tok/Gather", &["emb", "ids"], &["e"], vec![]),
            node("LayerNormalization", "ln", &["e", "s", "b"], &["y"], vec![]),
        ],
        vec![vi("ids", data_type::INT64, &[3])],
        vec![vi("y", data_type::FLOAT, &[3, 4])],
        vec![emb, ones, zeros],
        17,
    );
    let m = kiln::Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    let ids = kiln::Tensor::from_vec(vec![3], vec![1i64, 1_000_000, 3]).unwrap();
    let e = m.run(&[("ids".into(), ids)]).unwrap_err().to_string();
    assert!(
        e.contains("from node \"/tok/Gather\"") && e.contains("index 1000000 is out of range"),
        "{e}"
    );
}

/// The import error of one quantization node over x (f32 or u8 [2, 32]) and initializers,
/// with onnxruntime's contrib domain imported too.
fn quantized_err(n: NodeProto, x: i32, inits: Vec<TensorProto>) -> String {
    let mut m = ModelProto::decode(
        &model(
            vec![n],
            vec![vi("x", x, &[2, 32])],
            vec![vi("y", 0, &[])],
            inits,
            21,
        )[..],
    )
    .unwrap();
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.microsoft".into(),
        version: 1,
    });
    import_err(&m.encode_to_vec())
}

#[test]
fn bad_quantization_parameters_name_the_node() {
    // A quantizer dividing by a zero, negative or NaN scale.
    for s in [0.0f32, -0.5, f32::NAN] {
        let e = quantized_err(
            node("QuantizeLinear", "q", &["x", "s"], &["y"], vec![]),
            data_type::FLOAT,
            vec![floats("s", &[], &[s])],
        );
        assert!(
            e.starts_with("QuantizeLinear node \"q\": scale `s` must be positive; element 0 is"),
            "{e}"
        );
    }
    // A dequantizer's NaN scale (a negative or infinite one multiplies as well as any:
    // onnxruntime's symmetric 4-bit quantizer writes negative ones, its calibrator infinite
    // ones for a constant holding −inf); a zero point of another type than its input.
    let e = quantized_err(
        node("DequantizeLinear", "dq", &["x", "s"], &["y"], vec![]),
        data_type::UINT8,
        vec![floats("s", &[], &[f32::NAN])],
    );
    assert!(
        e.contains("node \"dq\": scale `s` must be a number;"),
        "{e}"
    );
    let e = quantized_err(
        node("DequantizeLinear", "dq", &["x", "s", "z"], &["y"], vec![]),
        data_type::UINT8,
        vec![
            floats("s", &[], &[1.0]),
            raw("z", data_type::INT8, &[], vec![0]),
        ],
    );
    assert!(
        e.contains("the zero point of the input is i8, but the input is u8"),
        "{e}"
    );
    // Blocked scales that do not fit the blocks.
    let e = quantized_err(
        node(
            "DequantizeLinear",
            "dq",
            &["x", "s"],
            &["y"],
            vec![int_attr("axis", 1), int_attr("block_size", 8)],
        ),
        data_type::UINT8,
        vec![floats("s", &[2, 3], &[1.0; 6])],
    );
    assert!(
        e.contains("a blocked parameter [2, 3] does not fit [2, 32] in blocks of 8 along axis 1"),
        "{e}"
    );
}

#[test]
fn bad_matmul_nbits_name_the_node() {
    let nbits = |block: i64, packed: usize, zp: Option<TensorProto>| {
        let mut inputs = vec!["x", "w", "s"];
        let mut inits = vec![
            raw("w", data_type::UINT8, &[packed as i64], vec![0x88; packed]),
            floats("s", &[4], &[0.5; 4]),
        ];
        if let Some(z) = zp {
            inputs.push("z");
            inits.push(z);
        }
        let mut n = node(
            "MatMulNBits",
            "mm",
            &inputs,
            &["y"],
            vec![
                int_attr("K", 32),
                int_attr("N", 4),
                int_attr("bits", 4),
                int_attr("block_size", block),
            ],
        );
        n.domain = "com.microsoft".into();
        quantized_err(n, data_type::FLOAT, inits)
    };
    // 4 rows of one block of 32 four-bit values: 64 bytes.
    assert!(nbits(24, 64, None).contains("node \"mm\": block_size 24 is not a power of two"));
    let e = nbits(32, 60, None);
    assert!(
        e.contains(
            "the packed weight: 60 values, where N = 4, K = 32, 4 bits in blocks of 32 need 64"
        ),
        "{e}"
    );
    let e = nbits(32, 64, Some(floats("z", &[4], &[1.0, 2.0, 20.0, 3.0])));
    assert!(
        e.contains("zero point 2 is 20, outside 0..=15 for 4-bit weights"),
        "{e}"
    );
    let e = nbits(32, 64, Some(raw("z", data_type::UINT8, &[3], vec![8; 3])));
    assert!(e.contains("the packed zero points: 3 values, where"), "{e}");
    // Rows of 32 where K says 64 (weights, scales sized for K = 64).
    let mut n = node(
        "MatMulNBits",
        "mm",
        &["x", "w", "s"],
        &["y"],
        vec![
            int_attr("K", 64),
            int_attr("N", 4),
            int_attr("bits", 4),
            int_attr("block_size", 32),
        ],
    );
    n.domain = "com.microsoft".into();
    let inits = vec![
        raw("w", data_type::UINT8, &[128], vec![0x88; 128]),
        floats("s", &[8], &[0.5; 8]),
    ];
    let e = quantized_err(n, data_type::FLOAT, inits);
    assert!(
        e.contains("node \"mm\"") && e.contains("A's rows have 32 values, where K is 64"),
        "{e}"
    );
}
