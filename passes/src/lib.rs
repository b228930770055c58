//! kiln's graph optimizer: the pass manager, classic passes (shape propagation, constant
//! folding, DCE, CSE, canonicalization), the e-graph language derived from the op table with
//! its rule sets and cost model, and fusion into kernel nodes. Passes never emit machine code.
//! Depends on `ir` only: constant folding evaluates through an evaluator the driver injects.
//!
//! Every pass is a function from a graph to a new graph, registered by name in [`PASSES`];
//! [`PIPELINE`] is the default order and [`run`] drives a list of passes, verifying after each
//! one when asked (always in debug and test builds).

mod canon;
pub mod egraph;
mod fold;
mod fuse;
mod layout;
mod manager;
mod rebuild;
mod report;
mod shapes;
mod tables;

pub use manager::{
    pass, pass_list, run, Done, Error, Evaluator, Options, Pass, PassRun, PASSES, PIPELINE,
};
pub use report::{report, Report};
