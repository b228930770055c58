//! Stage-level kernel transformations: fusing consecutive loop nests that iterate the same
//! outer space (a row's reduction next to the row's elementwise uses, as in softmax and
//! normalizations), and splitting a kernel into the stages the runtime runs one after
//! another, the parallel ones split over threads.
//!
//! Fusion is proven legal with an affine model of indices: an index is `Σ c(v)·v + c0` over
//! loop variables, coefficients being polynomials with nonnegative-integer variables (the dim
//! table). Two nests fuse when every buffer one writes and the other touches is accessed, by
//! both, in disjoint blocks along the shared loops: then iteration `J` of either touches only
//! block `J`, and each block sees the first nest's accesses before the second's.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use ir::{DType, Op};

use crate::loops::{BufId, Expr, Kernel, Mark, Stmt, VarId};

/// A polynomial over dim-table entries: monomial (sorted entries) → coefficient.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Poly(BTreeMap<Vec<usize>, i64>);

impl Poly {
    fn constant(c: i64) -> Poly {
        let mut p = Poly::default();
        if c != 0 {
            p.0.insert(vec![], c);
        }
        p
    }

    fn add(&self, o: &Poly, sign: i64) -> Option<Poly> {
        let mut p = self.clone();
        for (m, c) in &o.0 {
            let e = p.0.entry(m.clone()).or_insert(0);
            *e = e.checked_add(c.checked_mul(sign)?)?;
            if *e == 0 {
                p.0.remove(m);
            }
        }
        Some(p)
    }

    fn mul(&self, o: &Poly) -> Option<Poly> {
        let mut p = Poly::default();
        for (m1, c1) in &self.0 {
            for (m2, c2) in &o.0 {
                let mut m: Vec<usize> = m1.iter().chain(m2).copied().collect();
                m.sort_unstable();
                p = p.add(&Poly([(m, c1.checked_mul(*c2)?)].into()), 1)?;
            }
        }
        Some(p)
    }

    /// Nonnegative for every value of the dims (which are never negative).
    fn nonneg(&self) -> bool {
        self.0.values().all(|&c| c >= 0)
    }
}

/// `Σ terms[v]·v + constant`.
#[derive(Clone, Debug, Default)]
struct Affine {
    terms: BTreeMap<VarId, Poly>,
    constant: Poly,
}

impl Affine {
    fn coeff(&self, v: VarId) -> Poly {
        self.terms.get(&v).cloned().unwrap_or_default()
    }

    fn combine(&self, o: &Affine, sign: i64) -> Option<Affine> {
        let mut a = self.clone();
        a.constant = a.constant.add(&o.constant, sign)?;
        for (v, c) in &o.terms {
            let t = a.terms.entry(*v).or_default().add(c, sign)?;
            if t.0.is_empty() {
                a.terms.remove(v);
            } else {
                a.terms.insert(*v, t);
            }
        }
        Some(a)
    }

    fn scale(&self, p: &Poly) -> Option<Affine> {
        let mut a = Affine {
            terms: BTreeMap::new(),
            constant: self.constant.mul(p)?,
        };
        for (v, c) in &self.terms {
            let t = c.mul(p)?;
            if !t.0.is_empty() {
                a.terms.insert(*v, t);
            }
        }
        Some(a)
    }
}

/// The affine form of an i64 index expression whose variables are all loop variables
/// (`loops`), or `None`.
fn affine(e: &Expr, loops: &HashMap<VarId, Poly>) -> Option<Affine> {
    match e {
        Expr::Int(v, DType::I64) => Some(Affine {
            terms: BTreeMap::new(),
            constant: Poly::constant(*v),
        }),
        Expr::Dim(k) => Some(Affine {
            terms: BTreeMap::new(),
            constant: Poly([(vec![*k], 1)].into()),
        }),
        Expr::Var(v) if loops.contains_key(v) => Some(Affine {
            terms: [(*v, Poly::constant(1))].into(),
            constant: Poly::default(),
        }),
        Expr::Op {
            op,
            args,
            dtype: DType::I64,
        } if args.len() == 2 => {
            let (a, b) = (affine(&args[0], loops)?, affine(&args[1], loops)?);
            match op {
                Op::Add => a.combine(&b, 1),
                Op::Sub => a.combine(&b, -1),
                Op::Mul if a.terms.is_empty() => b.scale(&a.constant),
                Op::Mul if b.terms.is_empty() => a.scale(&b.constant),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The constant coefficient of variable `var` in i64 index expression `e` (`e = c·var + terms
/// without it`), every variable in `e` taken as a loop's; `None` where `e` is not affine or the
/// coefficient depends on dims.
pub fn coefficient(e: &Expr, var: VarId) -> Option<i64> {
    fn vars(e: &Expr, out: &mut HashMap<VarId, Poly>) {
        match e {
            Expr::Var(v) => {
                out.insert(*v, Poly::default());
            }
            Expr::Op { args, .. } => args.iter().for_each(|a| vars(a, out)),
            _ => {}
        }
    }
    let mut loops = HashMap::new();
    vars(e, &mut loops);
    let c = affine(e, &loops)?.coeff(var);
    match c.0.len() {
        0 => Some(0),
        1 => c.0.get(&Vec::new()).copied(),
        _ => None,
    }
}

/// A polynomial of an expression without variables (a loop extent).
fn poly(e: &Expr) -> Option<Poly> {
    let a = affine(e, &HashMap::new())?;
    a.terms.is_empty().then_some(a.constant)
}

/// Every buffer access of some statements: (buffer, index, is_store). A routine call counts
/// as accesses to the first and last element of each operand's range; a call with an operand
/// that is not a range (a product's strided operands) makes the statements unanalyzable
/// (`None`).
fn accesses<'a>(body: &'a [Stmt], out: &mut Vec<(BufId, Cow<'a, Expr>, bool)>) -> Option<()> {
    fn expr<'a>(e: &'a Expr, out: &mut Vec<(BufId, Cow<'a, Expr>, bool)>) {
        match e {
            Expr::Load { buf, index } => {
                out.push((*buf, Cow::Borrowed(&**index), false));
                expr(index, out);
            }
            Expr::Op { args, .. } => args.iter().for_each(|a| expr(a, out)),
            _ => {}
        }
    }
    for s in body {
        match s {
            Stmt::Loop { extent, body, .. } => {
                expr(extent, out);
                accesses(body, out)?;
            }
            Stmt::Set { value, .. } => expr(value, out),
            Stmt::Store { buf, index, value } => {
                out.push((*buf, Cow::Borrowed(index), true));
                expr(index, out);
                expr(value, out);
            }
            Stmt::Check { cond, .. } => expr(cond, out),
            // A routine's operands as ranges from their offsets; one that is not a range
            // (a strided product operand) ends the analysis.
            Stmt::Call(c) => {
                let r = c.checked().ok()?;
                for (i, op) in c.operands.iter().enumerate() {
                    let Some((buf, off)) = op else { continue };
                    expr(off, out);
                    if !c.accessed(i) {
                        continue;
                    }
                    let write = r.operands[i].1 == crate::routines::Role::Write;
                    let n = (r.extent)(i, &c.ints)?;
                    let last = match n {
                        Expr::Int(n, _) => off.clone() + Expr::i64(n - 1),
                        n => off.clone() + n + Expr::i64(-1),
                    };
                    out.push((*buf, Cow::Owned(off.clone()), write));
                    out.push((*buf, Cow::Owned(last), write));
                }
                c.ints.iter().chain(&c.scalars).for_each(|e| expr(e, out));
            }
        }
    }
    Some(())
}

/// Loop variables of statements with their extents (`None`: an extent is not a polynomial).
fn loop_vars(body: &[Stmt], out: &mut HashMap<VarId, Poly>) -> Option<()> {
    for s in body {
        if let Stmt::Loop {
            var, extent, body, ..
        } = s
        {
            out.insert(*var, poly(extent)?);
            loop_vars(body, out)?;
        }
    }
    Some(())
}

/// Whether statements assign `var` (as a loop variable, with `Set` or a call's result).
fn binds(body: &[Stmt], var: VarId) -> bool {
    body.iter().any(|s| match s {
        Stmt::Loop { var: v, body, .. } => *v == var || binds(body, var),
        s => s.sets() == Some(var),
    })
}

fn subst_expr(e: &mut Expr, from: VarId, to: &Expr) {
    match e {
        Expr::Var(v) if *v == from => *e = to.clone(),
        Expr::Load { index, .. } => subst_expr(index, from, to),
        Expr::Op { op, args, dtype } => {
            args.iter_mut().for_each(|a| subst_expr(a, from, to));
            // Fold what the substitution made constant.
            if *dtype == DType::I64 && args.len() == 2 && matches!(op, Op::Add | Op::Mul) {
                let (a, b) = (args[0].clone(), args[1].clone());
                *e = if matches!(op, Op::Add) { a + b } else { a * b };
            }
        }
        _ => {}
    }
}

/// Replaces every read of variable `var` in statements by `by` (loops binding `var` are left
/// alone: callers substitute variables that nothing rebinds).
pub fn replace_var(body: &mut [Stmt], var: VarId, by: &Expr) {
    for s in body {
        s.walk_mut(&mut |s| {
            for e in s.exprs_mut() {
                subst_expr(e, var, by);
            }
        });
    }
}

/// Renames loop variable `from` to `to`, where it is bound and where it is read.
fn subst(body: &mut [Stmt], from: VarId, to: VarId) {
    fn rebind(body: &mut [Stmt], from: VarId, to: VarId) {
        for s in body {
            if let Stmt::Loop { var, body, .. } = s {
                if *var == from {
                    *var = to;
                }
                rebind(body, from, to);
            }
        }
    }
    rebind(body, from, to);
    replace_var(body, from, &Expr::Var(to));
}

/// Whether running `a`'s and `b`'s bodies one after the other per iteration of the shared
/// loops `outer` (outermost first, with extents) computes what running all of `a` before all
/// of `b` does.
fn fusable(a: &[Stmt], b: &[Stmt], outer: &[(VarId, Poly)]) -> bool {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    if accesses(a, &mut xa).is_none() || accesses(b, &mut xb).is_none() {
        return false;
    }
    let mut loops: HashMap<VarId, Poly> = outer.iter().cloned().collect();
    if loop_vars(a, &mut loops).is_none() || loop_vars(b, &mut loops).is_none() {
        return false;
    }
    let written = |xs: &[(BufId, Cow<Expr>, bool)]| -> HashSet<BufId> {
        xs.iter().filter(|x| x.2).map(|x| x.0).collect()
    };
    let (wa, wb) = (written(&xa), written(&xb));
    let touched =
        |xs: &[(BufId, Cow<Expr>, bool)]| -> HashSet<BufId> { xs.iter().map(|x| x.0).collect() };
    let (ta, tb) = (touched(&xa), touched(&xb));
    // A buffer one nest writes and the other touches is shared: every access to it (in
    // either nest) must stay in the block of the shared iteration. Then each block sees the
    // first nest's accesses before the second's, fused or not.
    let shared: HashSet<BufId> = wa
        .intersection(&tb)
        .chain(wb.intersection(&ta))
        .copied()
        .collect();
    let outer_vars: Vec<VarId> = outer.iter().map(|o| o.0).collect();
    let mut shape: HashMap<BufId, Vec<Poly>> = HashMap::new();
    for (buf, index, _) in xa.iter().chain(&xb).filter(|x| shared.contains(&x.0)) {
        let buf = *buf;
        let Some(f) = affine(index, &loops) else {
            return false;
        };
        let coeffs: Vec<Poly> = outer_vars.iter().map(|&v| f.coeff(v)).collect();
        match shape.get(&buf) {
            Some(c) if *c != coeffs => return false,
            Some(_) => {}
            None => {
                shape.insert(buf, coeffs.clone());
            }
        }
        if !blocked(&f, &coeffs, outer, &loops) {
            return false;
        }
    }
    true
}

/// Whether `f` (with `coeffs` for the `outer` loops) maps distinct outer iterations to
/// disjoint blocks: coefficients nest like a row-major layout and the rest of the index stays
/// in `[0, innermost coefficient)`.
fn blocked(
    f: &Affine,
    coeffs: &[Poly],
    outer: &[(VarId, Poly)],
    loops: &HashMap<VarId, Poly>,
) -> bool {
    let Some(last) = coeffs.last() else {
        return false;
    };
    for j in 0..coeffs.len() - 1 {
        let Some(inner) = coeffs[j + 1].mul(&outer[j + 1].1) else {
            return false;
        };
        match coeffs[j].add(&inner, -1) {
            Some(d) if d.nonneg() => {}
            _ => return false,
        }
    }
    // The rest: Σ c·v + c0 over inner loops, at most Σ c·(extent - 1) + c0.
    if !f.constant.nonneg() {
        return false;
    }
    let mut max = f.constant.clone();
    for (v, c) in &f.terms {
        if outer.iter().any(|o| o.0 == *v) {
            continue;
        }
        if !c.nonneg() {
            return false;
        }
        let Some(ext) = loops.get(v) else {
            return false;
        };
        let Some(m) = ext
            .add(&Poly::constant(1), -1)
            .and_then(|e| c.mul(&e))
            .and_then(|t| max.add(&t, 1))
        else {
            return false;
        };
        max = m;
    }
    matches!(
        max.add(&Poly::constant(1), 1).and_then(|m| last.add(&m, -1)),
        Some(d) if d.nonneg()
    )
}

/// Fuses adjacent loops of `body` with equal extents and marks where that is legal, then the
/// bodies of fused loops, recursively (`outer`: the enclosing fused loops).
fn fuse_list(body: Vec<Stmt>, outer: &[(VarId, Poly)]) -> Vec<Stmt> {
    let mut out: Vec<Stmt> = Vec::with_capacity(body.len());
    for s in body {
        if let (
            Some(Stmt::Loop {
                var: va,
                extent: ea,
                mark: ma,
                body: ba,
            }),
            Stmt::Loop {
                var: vb,
                extent: eb,
                mark: mb,
                body: bb,
            },
        ) = (out.last_mut(), &s)
        {
            if ea == eb && ma == mb && !matches!(ma, Mark::Vector(_)) {
                if let Some(ext) = poly(ea) {
                    let mut chain = outer.to_vec();
                    chain.push((*va, ext));
                    let mut bb = bb.clone();
                    subst(&mut bb, *vb, *va);
                    // A body that binds the other loop's variable itself cannot be merged.
                    if !binds(ba, *va) && !binds(&bb, *va) && fusable(ba, &bb, &chain) {
                        ba.extend(bb);
                        continue;
                    }
                }
            }
        }
        out.push(s);
    }
    for s in &mut out {
        if let Stmt::Loop {
            var, extent, body, ..
        } = s
        {
            if let Some(ext) = poly(extent) {
                let mut chain = outer.to_vec();
                chain.push((*var, ext));
                *body = fuse_list(std::mem::take(body), &chain);
            }
        }
    }
    out
}

/// Fuses the kernel's loop nests where each shared iteration only reads what the same
/// iteration wrote (see the module docs).
pub fn fuse(k: &mut Kernel) {
    k.body = fuse_list(std::mem::take(&mut k.body), &[]);
}

impl Poly {
    fn as_const(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Vec::new()).copied(),
            _ => None,
        }
    }
}

/// Whether a statement (or one nested in it) reads or writes buffer `b`.
fn touches(s: &Stmt, b: BufId) -> bool {
    s.operands().iter().any(|&(x, _)| x == b)
        || s.exprs().iter().any(|e| e.loads(b))
        || s.body().iter().any(|s| touches(s, b))
}

/// Whether statements read or write buffer `b` (a product with B packed ahead of time reads
/// only the packed copy).
pub fn uses(body: &[Stmt], b: BufId) -> bool {
    body.iter().any(|s| touches(s, b))
}

/// The innermost loop holding every access to `b` (with the loops around it, outermost
/// first), if the accesses are all inside one loop.
fn holder<'a>(body: &'a [Stmt], b: BufId, chain: &mut Vec<&'a Stmt>) -> Option<()> {
    let mut users = body.iter().filter(|s| touches(s, b));
    let only = users.next()?;
    if users.next().is_some() {
        return None;
    }
    let Stmt::Loop { body: inner, .. } = only else {
        return None;
    };
    chain.push(only);
    let mut deeper = chain.clone();
    if holder(inner, b, &mut deeper).is_some() {
        *chain = deeper;
    }
    Some(())
}

/// Rewrites the index of every access to `b` in statements with `f` (a library routine's
/// offset for its operand `b`).
fn reindex(body: &mut [Stmt], b: BufId, f: &dyn Fn(&mut Expr)) {
    fn expr(e: &mut Expr, b: BufId, f: &dyn Fn(&mut Expr)) {
        match e {
            Expr::Load { buf, index } => {
                expr(index, b, f);
                if *buf == b {
                    f(index);
                }
            }
            Expr::Op { args, .. } => args.iter_mut().for_each(|a| expr(a, b, f)),
            _ => {}
        }
    }
    for s in body {
        s.walk_mut(&mut |s| {
            for e in s.exprs_mut() {
                expr(e, b, f);
            }
            if let Stmt::Store { buf, index, .. } = s {
                if *buf == b {
                    f(index);
                }
            }
            for (buf, off) in s.operand_offsets_mut() {
                if buf == b {
                    f(off);
                }
            }
        });
    }
}

/// Whether, in statement order (a loop as its body), every statement that reads `b` comes
/// after one that writes it: no value reaches these statements through `b` from before them.
fn written_before_read(body: &[Stmt], b: BufId, written: &mut bool) -> bool {
    for s in body {
        let reads = s.exprs().iter().any(|e| e.loads(b))
            || s.operands().iter().any(|&(x, write)| x == b && !write);
        if reads && !*written {
            return false;
        }
        if !written_before_read(s.body(), b, written) {
            return false;
        }
        if s.operands().iter().any(|&(x, write)| x == b && write) {
            *written = true;
        }
    }
    true
}

/// Shrinks scratch buffers that live within one iteration of a serial loop: when every access
/// to a buffer is inside one iteration's block (`v·B + [0, B)`, after fusion a row's
/// intermediate), the iterations one thread runs one after another can share a block. The
/// buffer then holds one block per iteration of the enclosing parallel loop (or one block),
/// instead of one per element of the loop nest: a row instead of a matrix.
pub fn shrink_scratch(k: &mut Kernel) {
    for b in 0..k.bufs.len() {
        if k.bufs[b].kind != crate::loops::BufKind::Scratch {
            continue;
        }
        let Some(len) = k.bufs[b].len.as_const() else {
            continue;
        };
        let mut chain = Vec::new();
        if holder(&k.body, b, &mut chain).is_none() {
            continue;
        }
        let Some(plan) = shrink_plan(&chain, b) else {
            continue;
        };
        let ShrinkPlan { outer, block, par } = plan;
        // Threads' blocks a cache line apart at least: adjacent ones in one line would bounce
        // it between the cores at every write (vit_tiny's softmax rows, 8 f32 maxima in one
        // line: 169 -> 216 µs at two threads).
        let line = k.bufs[b]
            .dtype
            .storage_bytes(1)
            .map_or(1, |e| (64 / e.max(1)).max(1));
        let stride = match &par {
            Some(_) => (block + line as i64 - 1) / line as i64 * line as i64,
            None => block,
        };
        let new_len = match &par {
            Some((_, extent)) => stride * extent,
            None => block,
        };
        if new_len >= len {
            continue;
        }
        // Walk to the holding loop again, mutably, and rewrite its accesses.
        let depth = chain.len();
        let mut body = &mut k.body;
        let mut target = None;
        for d in 0..depth {
            let pos = body
                .iter()
                .position(|s| touches(s, b))
                .expect("found above");
            let Stmt::Loop { body: inner, .. } = &mut body[pos] else {
                unreachable!("the chain is loops")
            };
            if d + 1 == depth {
                target = Some(inner);
                break;
            }
            body = inner;
        }
        let Some(inner) = target else {
            continue;
        };
        // Only a buffer each iteration writes before it reads may share one block between
        // iterations (a top-k's running values are read before they are written: they
        // carry over from the previous iteration of an outer loop).
        if !written_before_read(inner, b, &mut false) {
            continue;
        }
        let zero = Expr::i64(0);
        reindex(inner, b, &|index: &mut Expr| {
            for &v in &outer {
                subst_expr(index, v, &zero);
            }
            if let Some((pv, _)) = &par {
                let e = std::mem::replace(index, Expr::i64(0));
                *index = e + Expr::Var(*pv) * Expr::i64(stride);
            }
        });
        k.bufs[b].len = ir::Dim::constant(new_len);
    }
}

/// For the loops `chain` (outermost first) whose last holds every access to `b`: the loop
/// variables to drop from its indices, the block size, and the enclosing parallel loop's
/// variable and extent, if the accesses allow (see [`shrink_scratch`]).
fn shrink_plan(chain: &[&Stmt], b: BufId) -> Option<ShrinkPlan> {
    fn info(s: &Stmt) -> Option<(VarId, Expr, Mark, &[Stmt])> {
        match s {
            Stmt::Loop {
                var,
                extent,
                mark,
                body,
            } => Some((*var, extent.clone(), *mark, body.as_slice())),
            _ => None,
        }
    }
    let (lv, _, lmark, lbody) = info(chain.last()?)?;
    if lmark != Mark::Serial {
        return None;
    }
    let mut loops: HashMap<VarId, Poly> = HashMap::new();
    let mut outer = Vec::new();
    for s in chain {
        let (v, e, _, _) = info(s)?;
        loops.insert(v, poly(&e)?);
        outer.push(v);
    }
    loop_vars(lbody, &mut loops)?;
    let par = match info(chain[0])? {
        (v, e, Mark::Parallel, _) if v != lv => Some((v, poly(&e)?.as_const()?)),
        (_, _, Mark::Parallel, _) => return None,
        _ => None,
    };
    let mut xs = Vec::new();
    accesses(lbody, &mut xs)?;
    let mut block = None;
    let mut outer_coeffs: Option<Vec<Poly>> = None;
    for (_, index, _) in xs.iter().filter(|x| x.0 == b) {
        let f = affine(index, &loops)?;
        let coeffs: Vec<Poly> = outer.iter().map(|&v| f.coeff(v)).collect();
        match &outer_coeffs {
            Some(c) if *c != coeffs => return None,
            Some(_) => {}
            None => outer_coeffs = Some(coeffs.clone()),
        }
        let bsize = f.coeff(lv).as_const()?;
        if *block.get_or_insert(bsize) != bsize || bsize <= 0 {
            return None;
        }
        // The rest (inner loops and the constant) must stay in [0, B).
        let (mut lo, mut hi) = (f.constant.as_const()?, f.constant.as_const()?);
        for (v, c) in &f.terms {
            if outer.contains(v) {
                continue;
            }
            let c = c.as_const()?;
            let n = loops.get(v)?.as_const()?;
            if n <= 0 {
                return None;
            }
            let t = c.checked_mul(n - 1)?;
            if t < 0 {
                lo += t;
            } else {
                hi += t;
            }
        }
        if lo < 0 || hi >= bsize {
            return None;
        }
    }
    Some(ShrinkPlan {
        outer,
        block: block?,
        par,
    })
}

/// How [`shrink_scratch`] re-indexes a buffer: `index` with the `outer` loop variables set
/// to 0, plus `par_var · block` when a parallel loop `(par_var, extent)` encloses them.
struct ShrinkPlan {
    outer: Vec<VarId>,
    block: i64,
    par: Option<(VarId, i64)>,
}

/// One step of running a kernel: a kernel over the same buffers holding some of the original
/// top-level statements.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Its dim table is the original's plus two entries, `lo` and `hi`, that the caller sets
    /// per call: a parallel stage runs iterations `lo..hi` of its loop (`0 <= lo <= hi <=
    /// extent`); other stages ignore them.
    pub kernel: Kernel,
    /// The extent of the parallel loop (over the original dim table), for parallel stages.
    pub parallel: Option<Expr>,
}

/// Splits a kernel into stages: each top-level parallel loop is a stage that threads may
/// share, and each run of other top-level statements is one serial stage. Stages run in
/// order; scalar variables never live across stages (the lowering sets them inside nests).
pub fn split(k: &Kernel) -> Vec<Stage> {
    let n = k.dims.len();
    let mut dims = k.dims.clone();
    dims.push(ir::Dim::sym("$lo"));
    dims.push(ir::Dim::sym("$hi"));
    let stage = |body: Vec<Stmt>, vars: Vec<DType>, parallel: Option<Expr>| Stage {
        kernel: Kernel {
            name: k.name.clone(),
            bufs: k.bufs.clone(),
            dims: dims.clone(),
            vars,
            body,
        },
        parallel,
    };
    let mut stages = Vec::new();
    let mut serial = Vec::new();
    for s in &k.body {
        match s {
            Stmt::Loop {
                var,
                extent,
                mark: Mark::Parallel,
                body,
            } => {
                if !serial.is_empty() {
                    stages.push(stage(std::mem::take(&mut serial), k.vars.clone(), None));
                }
                // for u in 0..hi-lo { var = u + lo; body }
                let mut vars = k.vars.clone();
                vars.push(DType::I64);
                let u = vars.len() - 1;
                let mut inner = vec![Stmt::Set {
                    var: *var,
                    value: Expr::Var(u) + Expr::Dim(n),
                }];
                inner.extend(body.iter().cloned());
                let lp = Stmt::Loop {
                    var: u,
                    extent: Expr::index_op(Op::Sub, Expr::Dim(n + 1), Expr::Dim(n)),
                    mark: Mark::Serial,
                    body: inner,
                };
                stages.push(stage(vec![lp], vars, Some(extent.clone())));
            }
            s => serial.push(s.clone()),
        }
    }
    if !serial.is_empty() {
        stages.push(stage(serial, k.vars.clone(), None));
    }
    stages
}

/// The value of an index expression without variables under a dim table.
pub fn eval(e: &Expr, dims: &[i64]) -> Option<i64> {
    eval_at(e, dims, &[])
}

/// The value of an index expression under a dim table with its variables set as in `vars`.
pub fn eval_at(e: &Expr, dims: &[i64], vars: &[(VarId, i64)]) -> Option<i64> {
    match e {
        Expr::Int(v, DType::I64) => Some(*v),
        Expr::Dim(k) => dims.get(*k).copied(),
        Expr::Var(v) => vars.iter().find(|(w, _)| w == v).map(|&(_, x)| x),
        Expr::Op {
            op,
            args,
            dtype: DType::I64,
        } if args.len() == 2 => {
            let (a, b) = (
                eval_at(&args[0], dims, vars)?,
                eval_at(&args[1], dims, vars)?,
            );
            match op {
                Op::Add => a.checked_add(b),
                Op::Sub => a.checked_sub(b),
                Op::Mul => a.checked_mul(b),
                Op::Div if b != 0 => a.checked_div(b),
                Op::Min => Some(a.min(b)),
                Op::Max => Some(a.max(b)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A rough count of the scalar operations of statements under a dim table, for deciding
/// whether threads pay off (extents that depend on variables count as 16). A subexpression
/// that several statements of one body compute alike counts once, as compiled code computes
/// it (an argmin's running index and value select on one condition of a dozen operations).
pub fn cost(body: &[Stmt], dims: &[i64]) -> f64 {
    let mut seen: Vec<&Expr> = Vec::new();
    body.iter()
        .map(|s| match s {
            Stmt::Loop { extent, body, .. } => {
                let n = eval(extent, dims).unwrap_or(16).max(0) as f64;
                n * (1.0 + cost(body, dims))
            }
            Stmt::Call(c) => {
                let ints: Vec<f64> = c
                    .ints
                    .iter()
                    .map(|x| eval(x, dims).unwrap_or(16).max(0) as f64)
                    .collect();
                match c.checked() {
                    Ok(r) => (r.cost)(&ints),
                    Err(_) => 0.0,
                }
            }
            Stmt::Store { value, .. } => 1.0 + expr_cost(value, &mut seen),
            Stmt::Set { value, .. } => 1.0 + expr_cost(value, &mut seen),
            Stmt::Check { cond, .. } => 1.0 + expr_cost(cond, &mut seen),
        })
        .sum()
}

/// Scalar operations of a value: one per load and op (index arithmetic is not counted),
/// transcendental functions (polynomials of a dozen or more operations) and divisions
/// counting as 16.
fn expr_cost<'a>(e: &'a Expr, seen: &mut Vec<&'a Expr>) -> f64 {
    // An operation counted already (in this body) is computed once.
    if matches!(e, Expr::Op { .. }) {
        if seen.contains(&e) {
            return 0.0;
        }
        seen.push(e);
    }
    match e {
        Expr::Load { .. } => 1.0,
        Expr::Op { op, args, .. } => {
            let own = match op {
                Op::Exp
                | Op::Log
                | Op::Sigmoid
                | Op::Tanh
                | Op::Erf
                | Op::Div
                | Op::Recip
                | Op::Rsqrt
                | Op::Sqrt
                | Op::Pow => 16.0,
                _ => 1.0,
            };
            own + args.iter().map(|a| expr_cost(a, seen)).sum::<f64>()
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loops::{Buf, BufKind};
    use ir::Dim;

    fn buf(name: &str, len: i64, kind: BufKind) -> Buf {
        Buf {
            name: name.into(),
            dtype: DType::F32,
            len: Dim::constant(len),
            kind,
        }
    }

    fn lp(var: VarId, n: Expr, mark: Mark, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop {
            var,
            extent: n,
            mark,
            body,
        }
    }

    fn load(buf: BufId, index: Expr) -> Expr {
        Expr::Load {
            buf,
            index: Box::new(index),
        }
    }

    /// `t[i*n + j] = in[i*n + j]` then `out[i*n + j] = t[<read>]` over i < 4, j < n.
    fn two_nests(n: Expr, read: impl Fn(Expr, Expr) -> Expr) -> Kernel {
        let (i, j) = (Expr::Var(0), Expr::Var(1));
        let (i2, j2) = (Expr::Var(2), Expr::Var(3));
        let first = lp(
            0,
            Expr::i64(4),
            Mark::Parallel,
            vec![lp(
                1,
                n.clone(),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 2,
                    index: i.clone() * n.clone() + j.clone(),
                    value: load(0, i * n.clone() + j),
                }],
            )],
        );
        let second = lp(
            2,
            Expr::i64(4),
            Mark::Parallel,
            vec![lp(
                3,
                n.clone(),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: i2.clone() * n.clone() + j2.clone(),
                    value: load(2, read(i2, j2)),
                }],
            )],
        );
        Kernel {
            name: "k".into(),
            bufs: vec![
                buf("in0", 64, BufKind::Input),
                buf("out0", 64, BufKind::Output),
                buf("t", 64, BufKind::Scratch),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64; 4],
            body: vec![first, second],
        }
    }

    fn top_loops(k: &Kernel) -> usize {
        k.body.len()
    }

    #[test]
    fn same_row_reads_fuse() {
        for n in [Expr::i64(16), Expr::Dim(0)] {
            let mut k = two_nests(n.clone(), |i, j| i * n.clone() + j);
            fuse(&mut k);
            assert_eq!(top_loops(&k), 1, "{k}");
            // The inner vector loops stay apart (they are vector loops).
            let Stmt::Loop { body, .. } = &k.body[0] else {
                panic!()
            };
            assert_eq!(body.len(), 2, "{k}");
        }
    }

    /// A plane conv per channel (4 channels of 4×4, output plane `out_plane` long at
    /// `out_at(c)`) then `out[c*16 + j] = t[c*16 + j]`.
    fn conv_then_copy(out_at: impl Fn(Expr) -> Expr, out_plane: i64) -> Kernel {
        let c = Expr::Var(0);
        let geometry = crate::routines::conv::Geometry {
            h: 4,
            w: 4,
            oh: out_plane / 4,
            ow: 4,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph: 0,
            pw: 0,
        };
        let conv = lp(
            0,
            Expr::i64(4),
            Mark::Parallel,
            vec![Stmt::Call(Box::new(
                crate::loops::Conv2d {
                    x: 0,
                    x_off: c.clone() * Expr::i64(16),
                    k: 0,
                    k_off: Expr::i64(0),
                    out: 2,
                    out_off: out_at(c),
                    geometry,
                    epilogue: Default::default(),
                }
                .into(),
            ))],
        );
        let (i, j) = (Expr::Var(1), Expr::Var(2));
        let copy = lp(
            1,
            Expr::i64(4),
            Mark::Parallel,
            vec![lp(
                2,
                Expr::i64(16),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: i.clone() * Expr::i64(16) + j.clone(),
                    value: load(2, i * Expr::i64(16) + j),
                }],
            )],
        );
        Kernel {
            name: "k".into(),
            bufs: vec![
                buf("in0", 64, BufKind::Input),
                buf("out0", 64, BufKind::Output),
                buf("t", 80, BufKind::Scratch),
            ],
            dims: vec![],
            vars: vec![DType::I64; 3],
            body: vec![conv, copy],
        }
    }

    #[test]
    fn plane_convs_fuse_only_within_their_plane() {
        let mut k = conv_then_copy(|c| c * Expr::i64(16), 16);
        fuse(&mut k);
        assert_eq!(top_loops(&k), 1, "{k}");
        // Writing into the next channel's block, or a plane longer than the block: no.
        for (at, len) in [(4, 16), (0, 20)] {
            let mut k = conv_then_copy(move |c| c * Expr::i64(16) + Expr::i64(at), len);
            fuse(&mut k);
            assert_eq!(top_loops(&k), 2, "{k}");
        }
    }

    /// `for p in 0..2 parallel { for r in 0..4 { t[row·8 + j] = in[row·8 + j];
    /// out[row·8 + j] = t[row·8 + j + off] } }` with `row = p·4 + r`, `j < 8` (t: 64 long);
    /// with `after`, out is also read from t past the loop.
    fn row_scratch(off: i64, mark: Mark, after: bool) -> Kernel {
        let row = Expr::Var(0) * Expr::i64(4) + Expr::Var(1);
        let at = |j: usize| row.clone() * Expr::i64(8) + Expr::Var(j);
        let inner = vec![
            lp(
                2,
                Expr::i64(8),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 2,
                    index: at(2),
                    value: load(0, at(2)),
                }],
            ),
            lp(
                3,
                Expr::i64(8),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: at(3),
                    value: load(2, at(3) + Expr::i64(off)),
                }],
            ),
        ];
        let mut body = vec![lp(
            0,
            Expr::i64(2),
            Mark::Parallel,
            vec![lp(1, Expr::i64(4), mark, inner)],
        )];
        if after {
            body.push(lp(
                4,
                Expr::i64(8),
                Mark::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: Expr::Var(4),
                    value: load(2, Expr::Var(4)),
                }],
            ));
        }
        Kernel {
            name: "k".into(),
            bufs: vec![
                buf("in0", 64, BufKind::Input),
                buf("out0", 64, BufKind::Output),
                buf("t", 72, BufKind::Scratch),
            ],
            dims: vec![],
            vars: vec![DType::I64; 5],
            body,
        }
    }

    #[test]
    fn row_scratch_shrinks_to_a_row_per_parallel_iteration() {
        let mut k = row_scratch(0, Mark::Serial, false);
        shrink_scratch(&mut k);
        // A row of 8 per parallel iteration, the rows a cache line (16 f32) apart.
        assert_eq!(k.bufs[2].len, Dim::constant(32), "{k}");
        let text = k.to_string();
        assert!(text.contains("t[(v2 + (v0 * 16))] = in0"), "{text}");
        assert!(text.contains("t[(v3 + (v0 * 16))]"), "{text}");
        // Reading the next element past the row, a vector row loop, or a read after the
        // loop: the rows are not private to an iteration.
        for k0 in [
            row_scratch(1, Mark::Serial, false),
            row_scratch(0, Mark::Vector(4), false),
            row_scratch(0, Mark::Serial, true),
        ] {
            let mut k = k0.clone();
            shrink_scratch(&mut k);
            assert_eq!(k, k0);
        }
    }

    #[test]
    fn reads_of_other_rows_do_not_fuse() {
        let n = Expr::i64(16);
        let cases: Vec<Box<dyn Fn(Expr, Expr) -> Expr>> = vec![
            // The next row.
            Box::new(|i, j| (i + Expr::i64(1)) * Expr::i64(16) + j),
            // A transposed read.
            Box::new(|i, j| j * Expr::i64(4) + i),
            // Row 0 from every row.
            Box::new(|_, j| j),
            // Past the end of the row.
            Box::new(|i, j| i * Expr::i64(16) + j + Expr::i64(1)),
        ];
        for read in cases {
            let mut k = two_nests(n.clone(), read);
            fuse(&mut k);
            assert_eq!(top_loops(&k), 2, "{k}");
        }
    }

    #[test]
    fn symbolic_rows_must_match_the_layout() {
        // Rows of n elements read with a stride of n - 1 could overlap the next row.
        let n = Expr::Dim(0);
        let mut k = two_nests(n.clone(), |i, j| {
            i * Expr::index_op(Op::Sub, Expr::Dim(0), Expr::i64(1)) + j
        });
        fuse(&mut k);
        assert_eq!(top_loops(&k), 2, "{k}");
    }

    #[test]
    fn writes_of_what_the_first_nest_reads_fuse_only_in_the_same_block() {
        // The second nest also writes `in0` at `next_row`: in its own row that is harmless
        // (the first nest has read that row already); in the next row, the first nest's next
        // iteration would see the write.
        for (next_row, fused) in [(0, true), (1, false)] {
            let n = Expr::i64(16);
            let mut k = two_nests(n.clone(), |i, j| i * Expr::i64(16) + j);
            if let Stmt::Loop { body, .. } = &mut k.body[1] {
                if let Stmt::Loop { body, .. } = &mut body[0] {
                    body.push(Stmt::Store {
                        buf: 0,
                        index: (Expr::Var(2) + Expr::i64(next_row)) * Expr::i64(16) + Expr::Var(3),
                        value: Expr::Float(0.0, DType::F32),
                    });
                }
            }
            fuse(&mut k);
            assert_eq!(top_loops(&k), if fused { 1 } else { 2 }, "{k}");
        }
    }

    #[test]
    fn scratch_read_before_it_is_written_keeps_its_size() {
        let shrunk = |body: &str| {
            let mut k = crate::parse::parse_kernel(&format!(
                "kernel @k(in x: i64[4], out y: i64[2], scratch t: i64[2]) {{\n{body}\n}}"
            ))
            .unwrap();
            shrink_scratch(&mut k);
            k.bufs[2].len.as_const()
        };
        // Written, then read, in each iteration: one element serves them all.
        let fresh = "  for v0 in 0..4 {\n    for v1 in 0..2 {\n      t[v1] = x[v0]\n      \
                     y[v1] = t[v1]\n    }\n  }";
        assert_eq!(shrunk(fresh), Some(1));
        // Read first: each element carries a value over from the previous outer iteration.
        let carried = "  for v0 in 0..4 {\n    for v1 in 0..2 {\n      v2: i64 = t[v1]\n      \
                       t[v1] = add(v2, x[v0])\n      y[v1] = v2\n    }\n  }";
        assert_eq!(shrunk(carried), Some(2));
    }

    /// An operation two statements of a body compute alike counts once: an argmin's running
    /// index and value both select on one condition.
    #[test]
    fn a_shared_subexpression_costs_once() {
        let cost_of = |body: &str| {
            let k = crate::parse::parse_kernel(&format!(
                "kernel @k(in x: f32[8], out y: f32[1], out z: f32[1]) {{\n{body}\n}}"
            ))
            .unwrap();
            cost(&k.body, &[])
        };
        let one = cost_of("  y[0] = select(lt(x[0], x[1]), x[2], x[3])");
        let shared = cost_of(
            "  y[0] = select(lt(x[0], x[1]), x[2], x[3])\n  z[0] = select(lt(x[0], x[1]), x[4], x[5])",
        );
        let apart = cost_of(
            "  y[0] = select(lt(x[0], x[1]), x[2], x[3])\n  z[0] = select(lt(x[6], x[7]), x[4], x[5])",
        );
        // The second select's own op and its two loads: the condition (and its loads) not again.
        assert_eq!(shared, 2.0 * one - 3.0, "{one} {shared}");
        assert!(apart > shared);
    }
}
