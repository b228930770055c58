//! Equality saturation over the IR (egg 0.11). A graph is loaded into an e-graph, rule sets run
//! in stages under node, iteration and time limits, and the cheapest equivalent graph is
//! extracted under the cost model.
//!
//! Rules are Rust functions: given an e-class, a rule proposes expressions equal to it
//! ([`Expr`]: new ops over existing classes). The runner checks every proposed node with the
//! IR's type rules before adding it and requires the proposal to have the class's type, so a
//! wrong rule is an error naming it rather than an ill-typed graph. Matching is read-only and
//! happens for all rules before any proposal is applied; classes are visited in id order, so
//! the same input always gives the same output.

pub mod cost;
pub(crate) mod extract;
pub mod lang;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use egg::Id;
use ir::{Graph, Op};

pub use cost::Target;
pub use lang::{EGraph, ENode, EOp, Info};

use crate::rebuild::R;

/// An expression equal to the matched e-class: existing classes combined by new ops.
#[derive(Clone, Debug)]
pub enum Expr {
    Class(Id),
    Node(Op, Vec<Expr>),
}

impl Expr {
    pub fn op(op: Op, args: impl IntoIterator<Item = Expr>) -> Expr {
        Expr::Node(op, args.into_iter().collect())
    }
}

impl From<Id> for Expr {
    fn from(id: Id) -> Expr {
        Expr::Class(id)
    }
}

/// A named rewrite: the expressions it finds equal to a class.
pub struct Rule {
    pub name: &'static str,
    pub search: fn(&EGraph, Id) -> Vec<Expr>,
}

/// Rules that run together to saturation (or a limit) before the next stage starts.
pub struct Stage {
    pub name: &'static str,
    pub rules: &'static [Rule],
}

/// How far saturation may go.
#[derive(Clone, Debug)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            iterations: 12,
            nodes: 50_000,
            time: Duration::from_secs(2),
        }
    }
}

/// Why a stage stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No rule found anything new.
    Saturated,
    IterationLimit,
    NodeLimit,
    TimeLimit,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Saturated => "saturated",
            Stop::IterationLimit => "iteration limit",
            Stop::NodeLimit => "node limit",
            Stop::TimeLimit => "time limit",
        })
    }
}

/// What one stage did.
#[derive(Clone, Debug)]
pub struct StageReport {
    pub stage: &'static str,
    pub iterations: usize,
    pub stop: Stop,
    pub nodes: usize,
    pub classes: usize,
    /// Unions each rule caused.
    pub applied: BTreeMap<&'static str, usize>,
}

/// Loads `g`, runs the stages, and extracts the cheapest graph.
pub fn optimize(
    g: &Graph,
    stages: &[&Stage],
    limits: &Limits,
    target: &Target,
) -> R<(Graph, Vec<StageReport>)> {
    let mut loaded = extract::load(g)?;
    let mut reports = Vec::with_capacity(stages.len());
    for stage in stages {
        reports.push(saturate(&mut loaded.egraph, stage, limits)?);
    }
    let out = extract::extract(&loaded, g, target)?;
    Ok((out, reports))
}

fn saturate(eg: &mut EGraph, stage: &Stage, limits: &Limits) -> R<StageReport> {
    let start = Instant::now();
    let mut applied: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut iterations = 0;
    let stop = loop {
        if iterations >= limits.iterations {
            break Stop::IterationLimit;
        }
        if start.elapsed() >= limits.time {
            break Stop::TimeLimit;
        }
        iterations += 1;
        let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
        classes.sort();
        let mut proposals = Vec::new();
        for &id in &classes {
            for rule in stage.rules {
                for e in (rule.search)(eg, id) {
                    proposals.push((rule.name, id, e));
                }
            }
        }
        let nodes_before = eg.total_number_of_nodes();
        let mut unions = 0;
        let mut hit_limit = false;
        for (name, id, e) in proposals {
            let new = add(eg, &e).map_err(|m| format!("rule `{name}`: {m}"))?;
            let (want, got) = (&eg[id].data.types, &eg[new].data.types);
            if want != got {
                return Err(format!(
                    "rule `{name}` proposed a value of type {} for one of type {}",
                    got[0], want[0]
                ));
            }
            if eg.union(id, new) {
                unions += 1;
                *applied.entry(name).or_default() += 1;
            }
            if eg.total_number_of_nodes() > limits.nodes {
                hit_limit = true;
                break;
            }
        }
        eg.rebuild();
        if let Some(c) = eg.analysis.conflicts.first() {
            return Err(format!("stage `{}`: {c}", stage.name));
        }
        if hit_limit {
            break Stop::NodeLimit;
        }
        if unions == 0 && eg.total_number_of_nodes() == nodes_before {
            break Stop::Saturated;
        }
    };
    Ok(StageReport {
        stage: stage.name,
        iterations,
        stop,
        nodes: eg.total_number_of_nodes(),
        classes: eg.number_of_classes(),
        applied,
    })
}

/// Adds an expression, checking each new node's types first.
fn add(eg: &mut EGraph, e: &Expr) -> R<Id> {
    match e {
        Expr::Class(id) => Ok(eg.find(*id)),
        Expr::Node(op, args) => {
            let ids = args.iter().map(|a| add(eg, a)).collect::<R<Vec<Id>>>()?;
            add_node(eg, EOp::Ir(op.clone()), ids)
        }
    }
}

/// Adds one node after checking that it is well typed.
pub(crate) fn add_node(eg: &mut EGraph, op: EOp, children: Vec<Id>) -> R<Id> {
    {
        let infos: Vec<&Info> = children.iter().map(|&c| &eg[c].data).collect();
        lang::infer(&op, &infos).map_err(|m| {
            let name = match &op {
                EOp::Ir(op) => op.mnemonic().to_string(),
                EOp::Proj(i) => format!("proj {i}"),
            };
            format!("an ill-typed {name}: {m}")
        })?;
    }
    let op = eg.analysis.intern(op);
    Ok(eg.add(ENode { op, children }))
}
