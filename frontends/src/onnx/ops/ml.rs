//! `ai.onnx.ml` operators as tensor computations: tree ensembles become gather tables walked
//! a fixed number of steps (every sample and tree in lockstep), linear models and SVMs become
//! matmuls and kernels, and the preprocessing ops elementwise math. No op is evaluated by
//! interpreting model objects at run time.

use crate::onnx::OpError;

use std::collections::HashMap;

use ir::{Builder, DType, Dim, Op, Shape, Tensor, Value};

use super::{one, s, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

fn constant<T: ir::Element>(b: &mut Builder, shape: Vec<usize>, v: Vec<T>) -> R<Value> {
    let t = Tensor::from_vec(shape, v)?;
    b.constant(t).map_err(s)
}

/// Features as f32 (or f64 when given f64), as the ML operators compute.
fn features(ctx: &mut Ctx, name: &str) -> R<Value> {
    let x = ctx.ir(name)?;
    let b = &mut ctx.b;
    let x = if b.dtype(x) == DType::F64 {
        x
    } else {
        b.cast(x, DType::F32)?
    };
    match b.rank(x) {
        1 => b.unsqueeze(x, 0).map_err(s),
        2 => Ok(x),
        r => Err(format!("features must have rank 1 or 2, got {r}").into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

fn rule(m: &str) -> R<Rule> {
    Ok(match m {
        "BRANCH_LEQ" => Rule::Leq,
        "BRANCH_LT" => Rule::Lt,
        "BRANCH_GTE" => Rule::Gte,
        "BRANCH_GT" => Rule::Gt,
        "BRANCH_EQ" => Rule::Eq,
        "BRANCH_NEQ" => Rule::Neq,
        "LEAF" => Rule::Leaf,
        other => return Err(format!("unknown node mode `{other}`").into()),
    })
}

/// A forest flattened into per-node tables; leaves point at themselves so that walking past
/// a leaf stays there.
struct Forest {
    feature: Vec<i64>,
    threshold: Vec<f64>,
    rule: Vec<Rule>,
    yes: Vec<i64>,
    no: Vec<i64>,
    missing_yes: Vec<bool>,
    roots: Vec<i64>,
    /// [nodes, targets] leaf contributions.
    leaf: Vec<f64>,
    targets: usize,
}

fn ints(n: &Node, name: &str) -> R<Vec<i64>> {
    Ok(n.ints(name)?
        .ok_or_else(|| format!("missing attribute `{name}`"))?)
}

fn floats(n: &Node, name: &str) -> R<Vec<f32>> {
    if let Some(v) = n.floats(name)? {
        return Ok(v);
    }
    Err(format!("missing attribute `{name}`").into())
}

/// Builds the forest tables from the TreeEnsembleClassifier/Regressor attributes; `prefix` is
/// `class` or `target`.
fn forest(n: &Node, prefix: &str, targets: usize) -> R<Forest> {
    let tree = ints(n, "nodes_treeids")?;
    let node = ints(n, "nodes_nodeids")?;
    let feat = ints(n, "nodes_featureids")?;
    let vals = match n.floats("nodes_values")? {
        Some(v) => v,
        None => {
            return Err(
                "missing attribute `nodes_values` (nodes_values_as_tensor is not supported)".into(),
            )
        }
    };
    let modes = n
        .strings("nodes_modes")?
        .ok_or("missing attribute `nodes_modes`")?;
    let yes_ids = ints(n, "nodes_truenodeids")?;
    let no_ids = ints(n, "nodes_falsenodeids")?;
    let missing = n
        .ints("nodes_missing_value_tracks_true")?
        .unwrap_or_default();
    let count = tree.len();
    for (what, len) in [
        ("nodes_nodeids", node.len()),
        ("nodes_featureids", feat.len()),
        ("nodes_values", vals.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", yes_ids.len()),
        ("nodes_falsenodeids", no_ids.len()),
    ] {
        if len != count {
            return Err(format!("`{what}` has {len} entries, expected {count}").into());
        }
    }
    let index: HashMap<(i64, i64), usize> = tree
        .iter()
        .zip(&node)
        .enumerate()
        .map(|(i, (&t, &nd))| ((t, nd), i))
        .collect();
    let mut roots: Vec<(i64, usize)> = Vec::new();
    for (i, &t) in tree.iter().enumerate() {
        if !roots.iter().any(|(rt, _)| *rt == t) {
            roots.push((t, i));
        }
    }
    roots.sort();
    let mut f = Forest {
        feature: feat.clone(),
        threshold: vals.iter().map(|&v| f64::from(v)).collect(),
        rule: modes.iter().map(|m| rule(m)).collect::<R<_>>()?,
        yes: vec![0; count],
        no: vec![0; count],
        missing_yes: (0..count)
            .map(|i| missing.get(i).copied().unwrap_or(0) != 0)
            .collect(),
        roots: roots.iter().map(|&(_, i)| i as i64).collect(),
        leaf: vec![0.0; count * targets],
        targets,
    };
    for i in 0..count {
        if f.rule[i] == Rule::Leaf {
            f.yes[i] = i as i64;
            f.no[i] = i as i64;
            continue;
        }
        let look = |id: i64| {
            index.get(&(tree[i], id)).map(|&j| j as i64).ok_or_else(|| {
                format!(
                    "tree {} node {} refers to missing node {id}",
                    tree[i], node[i]
                )
            })
        };
        f.yes[i] = look(yes_ids[i])?;
        f.no[i] = look(no_ids[i])?;
        if feat[i] < 0 {
            return Err(format!("negative feature id at tree {} node {}", tree[i], node[i]).into());
        }
    }
    // Walking from each root, a revisited node means a cycle.
    for &(_, root) in &roots {
        let mut stack = vec![root];
        let mut seen = vec![false; count];
        while let Some(i) = stack.pop() {
            if f.rule[i] == Rule::Leaf {
                continue;
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("tree {} has a cycle", tree[i]).into());
            }
            stack.push(f.yes[i] as usize);
            stack.push(f.no[i] as usize);
        }
    }
    let ids = ints(n, &format!("{prefix}_ids"))?;
    let tids = ints(n, &format!("{prefix}_treeids"))?;
    let nids = ints(n, &format!("{prefix}_nodeids"))?;
    let w = floats(n, &format!("{prefix}_weights"))?;
    if ids.len() != w.len() || tids.len() != w.len() || nids.len() != w.len() {
        return Err(format!("{prefix} attributes differ in length").into());
    }
    for k in 0..w.len() {
        let i = *index.get(&(tids[k], nids[k])).ok_or_else(|| {
            format!(
                "{prefix} weight {k} names missing node ({}, {})",
                tids[k], nids[k]
            )
        })?;
        let t = usize::try_from(ids[k])
            .ok()
            .filter(|&t| t < targets)
            .ok_or_else(|| format!("{prefix} id {} is out of range", ids[k]))?;
        f.leaf[i * targets + t] += f64::from(w[k]);
    }
    Ok(f)
}

/// Per-sample, per-tree leaf contributions [batch, trees, targets]: one `tree_walk` (each row
/// walks each tree once, to its leaf), then the leaves' contributions gathered.
fn walk(b: &mut Builder, x: Value, f: &Forest, out: DType) -> R<Value> {
    let nodes = f.feature.len();
    if let Some(width) = b.shape(x).dim(1).as_const() {
        if let Some(&bad) = f
            .feature
            .iter()
            .zip(&f.rule)
            .find_map(|(ft, r)| (*r != Rule::Leaf && *ft >= width).then_some(ft))
        {
            return Err(format!("a node reads feature {bad}, but the input has {width}").into());
        }
    }
    let table_i = |b: &mut Builder, v: &[i64]| constant(b, vec![nodes], v.to_vec());
    let feat_t = table_i(b, &f.feature)?;
    let codes: Vec<i64> = f.rule.iter().map(|&r| r as i64).collect();
    let rule_t = table_i(b, &codes)?;
    let yes_t = table_i(b, &f.yes)?;
    let no_t = table_i(b, &f.no)?;
    let nan_t = constant(b, vec![nodes], f.missing_yes.clone())?;
    let thr = Tensor::new(vec![nodes], ir::Data::from_f64s(b.dtype(x), &f.threshold))?;
    let thr_t = b.constant(thr)?;
    let roots = constant(b, vec![f.roots.len()], f.roots.clone())?;
    let leaves = b.op1(
        Op::TreeWalk,
        &[x, feat_t, thr_t, rule_t, yes_t, no_t, nan_t, roots],
    )?;
    let leaf = Tensor::new(vec![nodes, f.targets], ir::Data::from_f64s(out, &f.leaf))?;
    let leaf = b.constant(leaf)?;
    Ok(b.op1(Op::Gather { axis: 0 }, &[leaf, leaves])?)
}

/// The classifier post transforms of the ML domain, on [batch, classes].
fn post_transform(b: &mut Builder, scores: Value, how: &str) -> R<Value> {
    Ok(match how {
        "NONE" | "" => scores,
        "LOGISTIC" => b.sigmoid(scores)?,
        "SOFTMAX" => b.softmax(scores, -1)?,
        "SOFTMAX_ZERO" => {
            // exp(v - max) for non-zero v, v * exp(-max) for (near) zero v, normalized; an
            // all-zero row becomes 0.5 everywhere.
            let m = b.reduce_max(scores, &[-1], true)?;
            let d = b.sub(scores, m)?;
            let e = b.exp(d)?;
            let nm = b.neg(m)?;
            let em = b.exp(nm)?;
            let zv = b.mul(scores, em)?;
            let a = b.unary(Op::Abs, scores)?;
            let tiny = b.scalar_like(1e-7, a)?;
            let big = b.op1(Op::Gt, &[a, tiny])?;
            let v = b.op1(Op::Select, &[big, e, zv])?;
            let sum = b.reduce_sum(v, &[-1], true)?;
            let zero = b.scalar_like(0.0, sum)?;
            let is0 = b.op1(Op::Eq, &[sum, zero])?;
            let y = b.div(v, sum)?;
            let half = b.scalar_like(0.5, y)?;
            b.select(is0, half, y)?
        }
        "PROBIT" => {
            // sqrt(2) * erfinv(2p - 1), with the approximation the reference uses.
            let two = b.scale(scores, 2.0)?;
            let one = b.scalar_like(1.0, two)?;
            let x = b.sub(two, one)?;
            let sgn = b.unary(Op::Sign, x)?;
            let om = b.sub(one, x)?;
            let op = b.add(one, x)?;
            let w = b.mul(om, op)?;
            let lg = b.unary(Op::Log, w)?;
            let c1 = b.scalar_like(2.0 / (std::f64::consts::PI * 0.147), lg)?;
            let hl = b.scale(lg, 0.5)?;
            let v = b.add(c1, hl)?;
            let v2 = b.scale(lg, 1.0 / 0.147)?;
            let vv = b.mul(v, v)?;
            let r = b.sub(vv, v2)?;
            let r = b.sqrt(r)?;
            let v3 = b.sub(r, v)?;
            let e = b.sqrt(v3)?;
            let e = b.mul(sgn, e)?;
            b.scale(e, std::f64::consts::SQRT_2)?
        }
        other => return Err(format!("unknown post_transform `{other}`").into()),
    })
}

/// Class labels from the int64 label list (string labels are not supported).
fn labels(n: &Node, key: &str) -> R<Vec<i64>> {
    if n.has("classlabels_strings") {
        return Err("string class labels are not supported".into());
    }
    ints(n, key)
}

/// Label of the first maximal score, mapped through the label table.
fn argmax_label(b: &mut Builder, scores: Value, labels: &[i64]) -> R<Value> {
    let am = b.op1(
        Op::ArgMax {
            axis: 1,
            last: false,
        },
        &[scores],
    )?;
    let t = constant(b, vec![labels.len()], labels.to_vec())?;
    b.op1(Op::Gather { axis: 0 }, &[t, am]).map_err(s)
}

pub fn tree_ensemble_classifier(ctx: &mut Ctx, n: &Node) -> Res {
    let labels = labels(n, "classlabels_int64s")?;
    let classes = labels.len();
    let x = features(ctx, n.req(0)?)?;
    let f = forest(n, "class", classes.max(1))?;
    let class_ids = ints(n, "class_ids")?;
    let binary = {
        let mut u = class_ids.clone();
        u.sort_unstable();
        u.dedup();
        u.len() == 1
    };
    let post = n.string_or("post_transform", "NONE")?;
    let base = n.floats("base_values")?;
    let b = &mut ctx.b;
    let per_tree = walk(b, x, &f, DType::F32)?;
    let mut res = b.reduce_sum(per_tree, &[1], false)?;
    if let Some(base) = base {
        let bl = base.len();
        let bv = constant(b, vec![bl], base)?;
        res = b.add(res, bv)?;
    }
    if binary {
        // The one scored class becomes the second column; the first is its complement.
        let s1 = super::slice_axis(b, res, 1, Dim::Const(0), Dim::Const(1), 1)?;
        let s0 = if matches!(post.as_str(), "NONE" | "PROBIT") {
            let one = b.scalar_like(1.0, s1)?;
            b.sub(one, s1)?
        } else {
            b.neg(s1)?
        };
        let rest = if classes > 2 {
            Some(super::slice_axis(
                b,
                res,
                1,
                Dim::Const(2),
                Dim::from(classes),
                1,
            )?)
        } else {
            None
        };
        let mut cols = vec![s0, s1];
        cols.extend(rest);
        res = b.op1(Op::Concat { axis: 1 }, &cols)?;
    }
    let scores = post_transform(b, res, &post)?;
    let lab = if classes == 1 {
        // A single label 1: argmax over the two columns maps 1 -> 1, 0 -> 0.
        b.op1(
            Op::ArgMax {
                axis: 1,
                last: false,
            },
            &[scores],
        )?
    } else {
        argmax_label(b, scores, &labels)?
    };
    Ok(vec![ctx.v(lab), ctx.v(scores)])
}

pub fn tree_ensemble_regressor(ctx: &mut Ctx, n: &Node) -> Res {
    let targets = n.int_or("n_targets", 1)? as usize;
    let x = features(ctx, n.req(0)?)?;
    let f = forest(n, "target", targets)?;
    let agg = n.string_or("aggregate_function", "SUM")?;
    let post = n.string_or("post_transform", "NONE")?;
    let base = n.floats("base_values")?;
    let b = &mut ctx.b;
    let per_tree = walk(b, x, &f, DType::F32)?;
    let mut res = aggregate(b, per_tree, &agg)?;
    if let Some(base) = base {
        let bl = base.len();
        let bv = constant(b, vec![bl], base)?;
        res = b.add(res, bv)?;
    }
    let y = post_transform(b, res, &post)?;
    one(ctx, y)
}

/// Per-row totals over the trees of [batch, trees, targets] by an ML aggregate function.
fn aggregate(b: &mut Builder, per_tree: Value, how: &str) -> R<Value> {
    Ok(match how {
        "SUM" => b.reduce_sum(per_tree, &[1], false),
        "AVERAGE" => b.reduce_mean(per_tree, &[1], false),
        "MIN" => b.reduce(|axes| Op::ReduceMin { axes }, per_tree, &[1], false),
        "MAX" => b.reduce_max(per_tree, &[1], false),
        other => return Err(format!("unknown aggregate_function `{other}`").into()),
    }?)
}

/// ai.onnx.ml TreeEnsemble (opset 5): interior nodes and leaves in separate tables (a child
/// is a leaf when its `nodes_trueleafs`/`nodes_falseleafs` flag says so), set-membership
/// nodes (a chain of equality tests, one per member of the node's set in
/// `membership_values`), aggregate and post transform as enums; Y has X's dtype.
pub fn tree_ensemble(ctx: &mut Ctx, n: &Node) -> Res {
    let ext = &ctx.opts.external_data;
    let tensor = |name: &str| -> R<Tensor> {
        n.tensor(name, ext)?
            .ok_or_else(|| format!("missing attribute `{name}`").into())
    };
    let f64s = |t: &Tensor| -> Vec<f64> { (0..t.numel()).map(|i| t.data().get_f64(i)).collect() };
    let ints_of = |t: &Tensor| -> Vec<i64> {
        (0..t.numel())
            .map(|i| t.data().get_i128(i) as i64)
            .collect()
    };
    let splits = f64s(&tensor("nodes_splits")?);
    let modes = ints_of(&tensor("nodes_modes")?);
    let feat = ints(n, "nodes_featureids")?;
    let (yes, no) = (
        ints(n, "nodes_truenodeids")?,
        ints(n, "nodes_falsenodeids")?,
    );
    let (yes_leaf, no_leaf) = (ints(n, "nodes_trueleafs")?, ints(n, "nodes_falseleafs")?);
    let leaf_target = ints(n, "leaf_targetids")?;
    let leaf_weight = f64s(&tensor("leaf_weights")?);
    let roots = ints(n, "tree_roots")?;
    let missing = n
        .ints("nodes_missing_value_tracks_true")?
        .unwrap_or_default();
    let members = match n.tensor("membership_values", ext)? {
        Some(t) => f64s(&t),
        None => Vec::new(),
    };
    let targets = usize::try_from(n.int("n_targets")?.ok_or("missing attribute `n_targets`")?)
        .map_err(|_| "n_targets is negative")?;
    let (inner, leaves) = (splits.len(), leaf_weight.len());
    for (what, len) in [
        ("nodes_modes", modes.len()),
        ("nodes_featureids", feat.len()),
        ("nodes_truenodeids", yes.len()),
        ("nodes_falsenodeids", no.len()),
        ("nodes_trueleafs", yes_leaf.len()),
        ("nodes_falseleafs", no_leaf.len()),
    ] {
        if len != inner {
            return Err(format!("`{what}` has {len} entries, `nodes_splits` {inner}").into());
        }
    }
    if leaf_target.len() != leaves {
        return Err("`leaf_targetids` and `leaf_weights` differ in length".into());
    }
    // The flat table: interior nodes 0..inner, leaves after them, then the extra equality
    // nodes of set-membership chains.
    let child = |id: i64, leaf: i64| -> R<i64> {
        let (base, count) = if leaf != 0 {
            (inner, leaves)
        } else {
            (0, inner)
        };
        usize::try_from(id)
            .ok()
            .filter(|&i| i < count)
            .map(|i| (base + i) as i64)
            .ok_or_else(|| format!("child {id} is out of range").into())
    };
    let mut f = Forest {
        feature: Vec::new(),
        threshold: Vec::new(),
        rule: Vec::new(),
        yes: Vec::new(),
        no: Vec::new(),
        missing_yes: Vec::new(),
        roots: Vec::new(),
        leaf: vec![0.0; (inner + leaves) * targets],
        targets,
    };
    let mut chains = Vec::new();
    let mut next_member = members.iter();
    for i in 0..inner {
        let (y, nn) = (child(yes[i], yes_leaf[i])?, child(no[i], no_leaf[i])?);
        let nan = missing.get(i).copied().unwrap_or(0) != 0;
        f.feature.push(feat[i]);
        f.yes.push(y);
        f.missing_yes.push(nan);
        if feat[i] < 0 {
            return Err(format!("node {i} reads a negative feature").into());
        }
        let rule = match modes[i] {
            0 => Rule::Leq,
            1 => Rule::Lt,
            2 => Rule::Gte,
            3 => Rule::Gt,
            4 => Rule::Eq,
            5 => Rule::Neq,
            6 => {
                // x in {m1, ..., mk}: x == m1, else x == m2, ..., else the false child.
                let set: Vec<f64> = next_member
                    .by_ref()
                    .take_while(|m| !m.is_nan())
                    .copied()
                    .collect();
                f.threshold.push(set.first().copied().unwrap_or(f64::NAN));
                f.rule.push(Rule::Eq);
                chains.push((i, set, y, nn, feat[i], nan));
                f.no.push(nn);
                continue;
            }
            m => return Err(format!("unknown node mode {m}").into()),
        };
        f.threshold.push(splits[i]);
        f.rule.push(rule);
        f.no.push(nn);
    }
    for j in 0..leaves {
        let t = usize::try_from(leaf_target[j])
            .ok()
            .filter(|&t| t < targets)
            .ok_or_else(|| format!("leaf target {} is out of range", leaf_target[j]))?;
        f.leaf[(inner + j) * targets + t] += leaf_weight[j];
        f.feature.push(0);
        f.threshold.push(0.0);
        f.rule.push(Rule::Leaf);
        f.yes.push((inner + j) as i64);
        f.no.push((inner + j) as i64);
        f.missing_yes.push(false);
    }
    if next_member.next().is_some() {
        return Err(
            "`membership_values` holds more sets than there are BRANCH_MEMBER nodes".into(),
        );
    }
    for (i, set, y, nn, feature, nan) in chains {
        let mut prev = i;
        for &m in set.iter().skip(1) {
            let at = f.rule.len();
            f.no[prev] = at as i64;
            f.feature.push(feature);
            f.threshold.push(m);
            f.rule.push(Rule::Eq);
            f.yes.push(y);
            f.no.push(nn);
            f.missing_yes.push(nan);
            prev = at;
        }
    }
    f.leaf.resize(f.rule.len() * targets, 0.0);
    for &r in &roots {
        // A one-leaf tree says so with both flags and one child; its root then indexes the
        // leaves (as the ONNX reference reads it; the spec's text would suggest the child).
        let i = usize::try_from(r)
            .ok()
            .filter(|&i| i < inner)
            .ok_or_else(|| format!("tree root {r} is out of range"))?;
        let degenerate = yes_leaf[i] != 0 && no_leaf[i] != 0 && yes[i] == no[i];
        f.roots.push(match degenerate {
            true => child(r, 1)?,
            false => r,
        });
    }
    let agg = match n.int_or("aggregate_function", 1)? {
        0 => "AVERAGE",
        1 => "SUM",
        2 => "MIN",
        3 => "MAX",
        a => return Err(format!("unknown aggregate_function {a}").into()),
    };
    // Each leaf feeds one target: for MIN and MAX the others must not count, so they hold the
    // aggregate's identity (the reference starts from the dtype's largest and smallest).
    let x_dtype = {
        let x = ctx.ir(n.req(0)?)?;
        ctx.b.dtype(x)
    };
    let big = if x_dtype == DType::F64 {
        f64::MAX
    } else {
        f64::from(f32::MAX)
    };
    if let Some(fill) = match agg {
        "MIN" => Some(big),
        "MAX" => Some(-big),
        _ => None,
    } {
        for (j, &t) in leaf_target.iter().enumerate() {
            for u in 0..targets {
                if u as i64 != t {
                    f.leaf[(inner + j) * targets + u] = fill;
                }
            }
        }
    }
    let post = match n.int_or("post_transform", 0)? {
        0 => "NONE",
        1 => "SOFTMAX",
        2 => "LOGISTIC",
        3 => "SOFTMAX_ZERO",
        4 => "PROBIT",
        p => return Err(format!("unknown post_transform {p}").into()),
    };
    let x = features(ctx, n.req(0)?)?;
    let b = &mut ctx.b;
    let dtype = b.dtype(x);
    let per_tree = walk(b, x, &f, dtype)?;
    let y = aggregate(b, per_tree, agg)?;
    let mut y = post_transform(b, y, post)?;
    // Y has X's dtype (features compute in f32 unless X is f64).
    if x_dtype.is_float() && x_dtype != dtype {
        y = b.cast(y, x_dtype)?;
    }
    one(ctx, y)
}

/// x @ coefficients^T + intercepts for `rows` output columns.
fn linear(b: &mut Builder, x: Value, coef: Vec<f32>, intercepts: Option<Vec<f32>>) -> R<Value> {
    let f = b
        .shape(x)
        .dim(1)
        .as_const()
        .ok_or("the feature count must be static")? as usize;
    if f == 0 || !coef.len().is_multiple_of(f) {
        return Err(format!(
            "{} coefficients do not divide into rows of {f} features",
            coef.len()
        )
        .into());
    }
    let rows = coef.len() / f;
    let w = Tensor::new(
        vec![rows, f],
        ir::Data::from_f64s(
            b.dtype(x),
            &coef.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        ),
    )?;
    let w = b.constant(w)?;
    let wt = b.transpose(w, &[1, 0])?;
    let mut y = b.matmul(x, wt)?;
    if let Some(ic) = intercepts.filter(|v| !v.is_empty()) {
        let ic = Tensor::new(
            vec![ic.len()],
            ir::Data::from_f64s(
                b.dtype(x),
                &ic.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            ),
        )?;
        let ic = b.constant(ic)?;
        y = b.add(y, ic)?;
    }
    Ok(y)
}

pub fn linear_classifier(ctx: &mut Ctx, n: &Node) -> Res {
    let labels = labels(n, "classlabels_ints")?;
    let x = features(ctx, n.req(0)?)?;
    let coef = floats(n, "coefficients")?;
    let intercepts = n.floats("intercepts")?;
    let post = n.string_or("post_transform", "NONE")?;
    let b = &mut ctx.b;
    let mut scores = linear(b, x, coef, intercepts)?;
    let cols = b.shape(scores).dim(1).as_const().unwrap_or(0);
    if cols == 1 && labels.len() == 2 {
        let neg = b.neg(scores)?;
        scores = b.op1(Op::Concat { axis: 1 }, &[neg, scores])?;
    }
    let scores = post_transform(b, scores, &post)?;
    let lab = if b.shape(scores).dim(1).as_const().unwrap_or(0) > 1 {
        argmax_label(b, scores, &labels)?
    } else {
        let th = b.scalar_like(if post == "NONE" { 0.0 } else { 0.5 }, scores)?;
        let ge = b.op1(Op::Ge, &[scores, th])?;
        let first = b.scalar(labels.first().copied().unwrap_or(1) as f64, DType::I64)?;
        let zero = b.scalar(0.0, DType::I64)?;
        let l = b.select(ge, first, zero)?;
        let batch = b.shape(l).dim(0).clone();
        b.reshape(l, Shape::new(vec![batch]))?
    };
    Ok(vec![ctx.v(lab), ctx.v(scores)])
}

pub fn linear_regressor(ctx: &mut Ctx, n: &Node) -> Res {
    let x = features(ctx, n.req(0)?)?;
    let coef = floats(n, "coefficients")?;
    let intercepts = n.floats("intercepts")?;
    let post = n.string_or("post_transform", "NONE")?;
    let b = &mut ctx.b;
    let y = linear(b, x, coef, intercepts)?;
    let y = post_transform(b, y, &post)?;
    one(ctx, y)
}

struct Kernel {
    kind: String,
    gamma: f64,
    coef0: f64,
    degree: f64,
}

fn kernel(n: &Node) -> R<Kernel> {
    let p = n.floats("kernel_params")?.unwrap_or_default();
    Ok(Kernel {
        kind: n.string_or("kernel_type", "LINEAR")?.to_ascii_lowercase(),
        gamma: p.first().copied().unwrap_or(0.0) as f64,
        coef0: p.get(1).copied().unwrap_or(0.0) as f64,
        degree: p.get(2).copied().unwrap_or(0.0).trunc() as f64,
    })
}

/// K(x, sv) for every sample and support vector: [batch, n_sv].
fn kernel_matrix(b: &mut Builder, x: Value, sv: Vec<f32>, k: &Kernel) -> R<Value> {
    let f = b
        .shape(x)
        .dim(1)
        .as_const()
        .ok_or("the feature count must be static")? as usize;
    if f == 0 || !sv.len().is_multiple_of(f) {
        return Err("support vectors do not match the feature count".into());
    }
    let m = sv.len() / f;
    let svt = Tensor::new(
        vec![m, f],
        ir::Data::from_f64s(
            b.dtype(x),
            &sv.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        ),
    )?;
    let svv = b.constant(svt)?;
    let svt = b.transpose(svv, &[1, 0])?;
    let dot = b.matmul(x, svt)?;
    let r = (|| -> ir::Result<Value> {
        Ok(match k.kind.as_str() {
            "linear" => dot,
            "poly" => {
                let t = b.scale(dot, k.gamma)?;
                let c = b.scalar_like(k.coef0, t)?;
                let t = b.add(t, c)?;
                let d = b.scalar_like(k.degree, t)?;
                b.pow(t, d)?
            }
            "sigmoid" => {
                let t = b.scale(dot, k.gamma)?;
                let c = b.scalar_like(k.coef0, t)?;
                let t = b.add(t, c)?;
                b.tanh(t)?
            }
            "rbf" => {
                // |x - sv|^2 = |x|^2 - 2 x.sv + |sv|^2
                let xx = b.mul(x, x)?;
                let xn = b.reduce_sum(xx, &[1], true)?;
                let sq = b.mul(svv, svv)?;
                let sn = b.reduce_sum(sq, &[1], false)?;
                let two = b.scale(dot, -2.0)?;
                let d = b.add(two, xn)?;
                let d = b.add(d, sn)?;
                let zero = b.scalar_like(0.0, d)?;
                let d = b.max(d, zero)?;
                let t = b.scale(d, -k.gamma)?;
                b.exp(t)?
            }
            other => {
                return Err(ir::Error::Build {
                    op: other.into(),
                    origin: None,
                    message: "unknown kernel".into(),
                })
            }
        })
    })();
    r.map_err(s)
}

pub fn svm_regressor(ctx: &mut Ctx, n: &Node) -> Res {
    let x = features(ctx, n.req(0)?)?;
    let k = kernel(n)?;
    let coef = floats(n, "coefficients")?;
    let rho = n.floats("rho")?.unwrap_or_default();
    let n_sv = n.int_or("n_supports", 0)?;
    let one_class = n.int_or("one_class", 0)? != 0;
    let post = n.string_or("post_transform", "NONE")?;
    let b = &mut ctx.b;
    let mut z = if n_sv > 0 {
        let sv = n
            .floats("support_vectors")?
            .ok_or("missing attribute `support_vectors`")?;
        let km = kernel_matrix(b, x, sv, &k)?;
        let c = Tensor::new(
            vec![coef.len(), 1],
            ir::Data::from_f64s(
                b.dtype(x),
                &coef.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            ),
        )?;
        let c = b.constant(c)?;
        b.matmul(km, c)?
    } else {
        linear(b, x, coef, None)?
    };
    let r0 = b.scalar_like(rho.first().copied().unwrap_or(0.0) as f64, z)?;
    z = b.add(z, r0)?;
    if one_class {
        let zero = b.scalar_like(0.0, z)?;
        let pos = b.op1(Op::Gt, &[z, zero])?;
        let p1 = b.scalar_like(1.0, z)?;
        let m1 = b.scalar_like(-1.0, z)?;
        z = b.op1(Op::Select, &[pos, p1, m1])?;
    }
    let y = post_transform(b, z, &post)?;
    one(ctx, y)
}

pub fn svm_classifier(ctx: &mut Ctx, n: &Node) -> Res {
    if n.floats("prob_a")?.is_some_and(|v| !v.is_empty()) {
        return Err(
            "SVMClassifier probability calibration (prob_a/prob_b) is not supported".into(),
        );
    }
    let labels = labels(n, "classlabels_ints")?;
    let x = features(ctx, n.req(0)?)?;
    let k = kernel(n)?;
    let coef = floats(n, "coefficients")?;
    let rho = n.floats("rho")?.unwrap_or_default();
    let vpc = n.ints("vectors_per_class")?.unwrap_or_default();
    let post = n.string_or("post_transform", "NONE")?;
    let classes = labels.len();
    let b = &mut ctx.b;
    let sv_count: i64 = vpc.iter().sum();
    if sv_count == 0 {
        return Err("linear SVMClassifier without support vectors is not supported".into());
    }
    let sv = n
        .floats("support_vectors")?
        .ok_or("missing attribute `support_vectors`")?;
    let km = kernel_matrix(b, x, sv, &k)?;
    let m = sv_count as usize;
    if coef.len() != (classes - 1) * m || vpc.len() != classes {
        return Err("coefficients and vectors_per_class do not match the classes".into());
    }
    let start: Vec<usize> = vpc
        .iter()
        .scan(0usize, |acc, &c| {
            let s0 = *acc;
            *acc += c as usize;
            Some(s0)
        })
        .collect();
    // One-vs-one: for each pair (i, j), a weight vector over all support vectors.
    let pairs: Vec<(usize, usize)> = (0..classes)
        .flat_map(|i| (i + 1..classes).map(move |j| (i, j)))
        .collect();
    let mut w = vec![0.0f64; m * pairs.len()];
    for (p, &(i, j)) in pairs.iter().enumerate() {
        for v in start[i]..start[i] + vpc[i] as usize {
            w[v * pairs.len() + p] = f64::from(coef[(j - 1) * m + v]);
        }
        for v in start[j]..start[j] + vpc[j] as usize {
            w[v * pairs.len() + p] = f64::from(coef[i * m + v]);
        }
    }
    let wt = Tensor::new(vec![m, pairs.len()], ir::Data::from_f64s(b.dtype(x), &w))?;
    let wt = b.constant(wt)?;
    let dec = b.matmul(km, wt)?;
    let rt = Tensor::new(
        vec![pairs.len()],
        ir::Data::from_f64s(
            b.dtype(x),
            &rho.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        ),
    )?;
    let rt = b.constant(rt)?;
    let dec = b.add(dec, rt)?;
    // Votes: pair p goes to i when its decision is positive, else to j.
    let mut vote = vec![0.0f64; pairs.len() * classes];
    let mut against = vec![0.0f64; pairs.len() * classes];
    for (p, &(i, j)) in pairs.iter().enumerate() {
        vote[p * classes + i] = 1.0;
        against[p * classes + j] = 1.0;
    }
    let zero = b.scalar_like(0.0, dec)?;
    let pos = b.op1(Op::Gt, &[dec, zero])?;
    let posf = b.cast(pos, b.dtype(dec))?;
    let one_v = b.scalar_like(1.0, posf)?;
    let negf = b.sub(one_v, posf)?;
    let vt = Tensor::new(
        vec![pairs.len(), classes],
        ir::Data::from_f64s(b.dtype(x), &vote),
    )?;
    let at = Tensor::new(
        vec![pairs.len(), classes],
        ir::Data::from_f64s(b.dtype(x), &against),
    )?;
    let vt = b.constant(vt)?;
    let at = b.constant(at)?;
    let v1 = b.matmul(posf, vt)?;
    let v2 = b.matmul(negf, at)?;
    let votes = b.add(v1, v2)?;
    let lab = argmax_label(b, votes, &labels)?;
    let scores = post_transform(b, dec, &post)?;
    Ok(vec![ctx.v(lab), ctx.v(scores)])
}

pub fn scaler(ctx: &mut Ctx, n: &Node) -> Res {
    let x = features(ctx, n.req(0)?)?;
    let offset = n.floats("offset")?.unwrap_or_else(|| vec![0.0]);
    let scale = n.floats("scale")?.unwrap_or_else(|| vec![1.0]);
    let b = &mut ctx.b;
    let mk = |b: &mut Builder, v: Vec<f32>| -> R<Value> {
        let len = v.len();
        let t = constant(b, vec![len], v)?;
        b.cast(t, b.dtype(x)).map_err(s)
    };
    let o = mk(b, offset)?;
    let sc = mk(b, scale)?;
    let y = b.sub(x, o)?;
    let y = b.mul(y, sc)?;
    one(ctx, y)
}

pub fn normalizer(ctx: &mut Ctx, n: &Node) -> Res {
    let x = features(ctx, n.req(0)?)?;
    let norm = n.string_or("norm", "MAX")?;
    let b = &mut ctx.b;
    let d = match norm.as_str() {
        "MAX" => b.reduce_max(x, &[1], true),
        "L1" => b
            .unary(Op::Abs, x)
            .and_then(|a| b.reduce_sum(a, &[1], true)),
        "L2" => b
            .mul(x, x)
            .and_then(|a| b.reduce_sum(a, &[1], true))
            .and_then(|a| b.sqrt(a)),
        other => return Err(format!("unknown norm `{other}`").into()),
    }?;
    let y = b.div(x, d)?;
    one(ctx, y)
}

pub fn binarizer(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let th = n.float_or("threshold", 0.0)? as f64;
    let b = &mut ctx.b;
    let t = b.scalar_like(th, x)?;
    let gt = b.op1(Op::Gt, &[x, t])?;
    let y = b.cast(gt, b.dtype(x))?;
    one(ctx, y)
}

pub fn array_feature_extractor(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let idx = ctx.ir(n.req(1)?)?;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let flat = b.shape(idx).numel()?;
    let idx = b.reshape(idx, Shape::new(vec![flat]))?;
    let y = b.op1(Op::Gather { axis: r as i64 - 1 }, &[x, idx])?;
    one(ctx, y)
}

pub fn label_encoder(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let (keys, values, default): (Vec<f64>, Vec<f64>, f64) =
        if let Some(k) = n.ints("keys_int64s")? {
            let k: Vec<f64> = k.into_iter().map(|v| v as f64).collect();
            match (n.ints("values_int64s")?, n.floats("values_floats")?) {
                (Some(v), _) => (
                    k,
                    v.into_iter().map(|v| v as f64).collect(),
                    n.int_or("default_int64", -1)? as f64,
                ),
                (_, Some(v)) => (
                    k,
                    v.into_iter().map(f64::from).collect(),
                    n.float_or("default_float", -0.0)? as f64,
                ),
                _ => return Err("string values are not supported".into()),
            }
        } else if let Some(k) = n.floats("keys_floats")? {
            let k: Vec<f64> = k.into_iter().map(f64::from).collect();
            match (n.ints("values_int64s")?, n.floats("values_floats")?) {
                (Some(v), _) => (
                    k,
                    v.into_iter().map(|v| v as f64).collect(),
                    n.int_or("default_int64", -1)? as f64,
                ),
                (_, Some(v)) => (
                    k,
                    v.into_iter().map(f64::from).collect(),
                    n.float_or("default_float", -0.0)? as f64,
                ),
                _ => return Err("string values are not supported".into()),
            }
        } else if n.has("keys_tensor") {
            let kt = n
                .tensor("keys_tensor", &ctx.opts.external_data)?
                .ok_or("bad keys_tensor")?;
            let vt = n
                .tensor("values_tensor", &ctx.opts.external_data)?
                .ok_or("missing values_tensor")?;
            let dt = n.tensor("default_tensor", &ctx.opts.external_data)?;
            let d = dt
                .map(|t| t.to_f64_vec().first().copied().unwrap_or(0.0))
                .unwrap_or(if vt.dtype().is_float() { -0.0 } else { -1.0 });
            (kt.to_f64_vec(), vt.to_f64_vec(), d)
        } else {
            return Err("string keys are not supported".into());
        };
    if keys.len() != values.len() {
        return Err("keys and values differ in length".into());
    }
    let out_dtype = if n.has("values_int64s") {
        DType::I64
    } else if n.has("values_floats") {
        DType::F32
    } else {
        n.tensor("values_tensor", &ctx.opts.external_data)?
            .map(|t| t.dtype())
            .unwrap_or(DType::F32)
    };
    let b = &mut ctx.b;
    let shape = b.shape(x).clone();
    let mut y = b.scalar(default, out_dtype)?;
    y = b.broadcast_to(y, &shape)?;
    // Later keys win ties, as a dictionary built in order would.
    for (k, v) in keys.iter().zip(&values) {
        let kv = b.scalar(*k, b.dtype(x))?;
        let kv = b.broadcast_to(kv, &shape)?;
        let hit = b.op1(Op::Eq, &[x, kv])?;
        let vv = b.scalar(*v, out_dtype)?;
        let vv = b.broadcast_to(vv, &shape)?;
        y = b.op1(Op::Select, &[hit, vv, y])?;
    }
    one(ctx, y)
}
