//! kiln's frontends: turn model formats into `ir` graphs.
//!
//! [`onnx`] decodes ONNX models (prost messages written in Rust, no protoc) and imports them
//! through an op registry keyed by domain, op type and opset version; composite operators
//! decompose into IR primitives. Every frontend takes bytes and returns a graph; it depends
//! on `ir` only.

pub mod onnx;
