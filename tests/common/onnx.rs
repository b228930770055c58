//! Builders for small ONNX models in tests.

use kiln::frontends::onnx::proto::*;
use prost::Message;

pub fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimValue::DimValue(d)),
                            denotation: String::new(),
                        })
                        .collect(),
                }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

pub fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: v,
        ..Default::default()
    }
}

/// A tensor initializer of `dtype` (an ONNX data type) from raw little-endian bytes.
pub fn raw(name: &str, dtype: i32, dims: &[i64], bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype,
        raw_data: bytes,
        ..Default::default()
    }
}

/// An f32 initializer, its values as raw little-endian bytes.
pub fn floats(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    raw(name, data_type::FLOAT, dims, bytes)
}

pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opset: i64,
) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `bytes`, a model, importing com.microsoft's opset 1 as well (its contrib ops).
pub fn importing_ms(bytes: &[u8]) -> Vec<u8> {
    let mut m = ModelProto::decode(bytes).unwrap();
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.microsoft".into(),
        version: 1,
    });
    m.encode_to_vec()
}

/// The ONNX model `bytes` run on `feeds` compiled at 1 and 2 threads, then interpreted: each
/// run's label and outputs.
pub fn runs(
    bytes: &[u8],
    feeds: &[(String, kiln::Tensor)],
) -> Vec<(String, Vec<(String, kiln::Tensor)>)> {
    let mut out = Vec::new();
    for threads in [1, 2] {
        let mut opts = kiln::ModelOptions::default();
        opts.compile.threads = Some(threads);
        let m = kiln::Model::from_onnx(bytes, Default::default(), opts)
            .unwrap_or_else(|e| panic!("{e}"));
        out.push((format!("{threads} threads"), m.run(feeds).unwrap()));
    }
    let m = kiln::Model::from_onnx(bytes, Default::default(), Default::default()).unwrap();
    out.push(("interpreted".into(), m.interpret(feeds).unwrap()));
    out
}
