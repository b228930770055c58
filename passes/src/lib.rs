//! kiln's graph optimizer: the pass manager, classic passes (shape propagation, constant
//! folding, DCE, CSE, canonicalization), the e-graph language derived from the op table with
//! its rule sets and cost model, and fusion into kernel nodes. Passes never emit machine code.
//! Depends on `ir` only.
