//! kiln's frontends: turn model formats into `ir` graphs.
//!
//! The ONNX importer (prost messages written in Rust, an op registry keyed by domain, op type
//! and opset range, composite ops decomposed into IR primitives) lands here next; every
//! frontend exposes one entry that takes bytes and returns a graph. Depends on `ir` only.
