//! Symbolic dimensions: integers or expressions over named symbols (`batch`, `seq`) kept in one
//! canonical simplified form, so that structurally different spellings of the same value compare
//! equal (`seq*2 == 2*seq`, `(seq+5)/2 == (seq+1)/2+2`).
//!
//! A [`Dim`] is a polynomial with integer coefficients over *atoms*; an atom is a symbol, a floor
//! division or a floor modulus that could not be simplified away. Polynomials keep their terms
//! sorted and merged, with no zero coefficients, and a dim that is a plain integer is always
//! `Dim::Const`. All arithmetic is checked: overflowing `i64` is an error, never a wrap.

use std::fmt;
use std::sync::Arc;

/// Why an operation on dims failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DimError {
    #[error("dimension arithmetic overflows i64")]
    Overflow,
    #[error("dimension divided by zero")]
    DivByZero,
    #[error("symbol `{0}` is not bound")]
    Unbound(String),
    #[error("dimension expression is too complex")]
    TooComplex,
}

/// One dimension of a shape. It serializes as its terms and is rebuilt from them by the
/// arithmetic below, so deserialized dims are canonical (or an error) whatever the bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "DimRepr", try_from = "DimRepr")]
pub enum Dim {
    Const(i64),
    /// Never a plain constant: those are always `Const`.
    Expr(Arc<Poly>),
}

/// A sum of terms in canonical order: terms sorted by monomial, the constant term last.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Poly {
    terms: Vec<Term>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Term {
    /// `true` only for the constant term, so that it sorts last.
    is_const: bool,
    /// Sorted multiset of atoms; empty for the constant term.
    mono: Vec<Atom>,
    coeff: i64,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Atom {
    Sym(Arc<str>),
    Div(Box<Dim>, Box<Dim>),
    Mod(Box<Dim>, Box<Dim>),
    /// The smaller of two dims (ordered canonically).
    Min(Box<Dim>, Box<Dim>),
}

/// A dim as serialized: a constant, or terms (coefficient, atoms multiplied).
#[derive(serde::Serialize, serde::Deserialize)]
enum DimRepr {
    Const(i64),
    Terms(Vec<(i64, Vec<AtomRepr>)>),
}

#[derive(serde::Serialize, serde::Deserialize)]
enum AtomRepr {
    Sym(String),
    Div(
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
    ),
    Mod(
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
    ),
    Min(
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
        #[serde(deserialize_with = "crate::deserialize_nested")] DimRepr,
    ),
}

impl From<Dim> for DimRepr {
    fn from(d: Dim) -> DimRepr {
        fn repr(d: &Dim) -> DimRepr {
            match d {
                Dim::Const(c) => DimRepr::Const(*c),
                Dim::Expr(p) => DimRepr::Terms(
                    p.terms
                        .iter()
                        .map(|t| (t.coeff, t.mono.iter().map(atom).collect()))
                        .collect(),
                ),
            }
        }
        fn atom(a: &Atom) -> AtomRepr {
            match a {
                Atom::Sym(s) => AtomRepr::Sym(s.to_string()),
                Atom::Div(a, b) => AtomRepr::Div(repr(a), repr(b)),
                Atom::Mod(a, b) => AtomRepr::Mod(repr(a), repr(b)),
                Atom::Min(a, b) => AtomRepr::Min(repr(a), repr(b)),
            }
        }
        repr(&d)
    }
}

impl TryFrom<DimRepr> for Dim {
    type Error = String;

    fn try_from(r: DimRepr) -> Result<Dim, String> {
        fn dim(r: DimRepr, depth: usize) -> Result<Dim, String> {
            if depth > 64 {
                return Err("a dimension nests too deeply".into());
            }
            let terms = match r {
                DimRepr::Const(c) => return Ok(Dim::Const(c)),
                DimRepr::Terms(t) => t,
            };
            let mut sum = Dim::Const(0);
            for (coeff, atoms) in terms {
                let mut term = Dim::Const(coeff);
                for a in atoms {
                    let a = match a {
                        AtomRepr::Sym(s) if is_valid_symbol(&s) => Dim::sym(&s),
                        AtomRepr::Sym(s) => return Err(format!("`{s}` cannot name a symbol")),
                        AtomRepr::Div(a, b) => {
                            { dim(a, depth + 1)?.floor_div(&dim(b, depth + 1)?) }
                                .map_err(|e| e.to_string())?
                        }
                        AtomRepr::Mod(a, b) => {
                            { dim(a, depth + 1)?.floor_mod(&dim(b, depth + 1)?) }
                                .map_err(|e| e.to_string())?
                        }
                        AtomRepr::Min(a, b) => { dim(a, depth + 1)?.minimum(&dim(b, depth + 1)?) }
                            .map_err(|e| e.to_string())?,
                    };
                    term = term.mul(&a).map_err(|e| e.to_string())?;
                }
                sum = sum.add(&term).map_err(|e| e.to_string())?;
            }
            Ok(sum)
        }
        dim(r, 0)
    }
}

/// Bounds on canonical forms, so that hostile input cannot make products of sums explode.
const MAX_TERMS: usize = 256;
const MAX_DEGREE: usize = 16;

fn floor_div_i64(a: i64, b: i64) -> Result<i64, DimError> {
    if b == 0 {
        return Err(DimError::DivByZero);
    }
    let q = a.checked_div(b).ok_or(DimError::Overflow)?;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        Ok(q - 1)
    } else {
        Ok(q)
    }
}

fn floor_mod_i64(a: i64, b: i64) -> Result<i64, DimError> {
    if b == 0 {
        return Err(DimError::DivByZero);
    }
    let r = a.checked_rem(b).ok_or(DimError::Overflow)?;
    if r != 0 && ((r < 0) != (b < 0)) {
        Ok(r + b)
    } else {
        Ok(r)
    }
}

/// Words that cannot name a symbol because they mean something else in text.
const RESERVED: [&str; 4] = ["inf", "nan", "mod", "min"];

/// Whether `name` can be a symbol: an identifier that is not a reserved word.
pub fn is_valid_symbol(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !RESERVED.contains(&name)
}

impl Dim {
    pub fn constant(v: i64) -> Dim {
        Dim::Const(v)
    }

    pub fn sym(name: &str) -> Dim {
        Dim::from_terms(vec![Term {
            is_const: false,
            mono: vec![Atom::Sym(name.into())],
            coeff: 1,
        }])
        .expect("a single symbol cannot overflow")
    }

    pub fn as_const(&self) -> Option<i64> {
        match self {
            Dim::Const(c) => Some(*c),
            Dim::Expr(_) => None,
        }
    }

    /// Whether the dim is provably at least 0 for every binding of its symbols (which are
    /// sizes, never negative): no negative coefficient, and every floor-division and
    /// remainder is of provably non-negative operands.
    pub fn is_nonnegative(&self) -> bool {
        fn atom(a: &Atom) -> bool {
            match a {
                Atom::Sym(_) => true,
                Atom::Div(x, y) => x.is_nonnegative() && y.is_nonnegative(),
                Atom::Mod(_, y) => y.is_nonnegative(),
                Atom::Min(x, y) => x.is_nonnegative() && y.is_nonnegative(),
            }
        }
        match self {
            Dim::Const(c) => *c >= 0,
            Dim::Expr(p) => p
                .terms
                .iter()
                .all(|t| t.coeff >= 0 && t.mono.iter().all(atom)),
        }
    }

    /// The symbol's name when this dim is exactly one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        match self {
            Dim::Expr(p) => match p.terms.as_slice() {
                [Term { mono, coeff: 1, .. }] => match mono.as_slice() {
                    [Atom::Sym(s)] => Some(s),
                    _ => None,
                },
                _ => None,
            },
            Dim::Const(_) => None,
        }
    }

    fn terms(&self) -> Vec<Term> {
        match self {
            Dim::Const(0) => vec![],
            Dim::Const(c) => vec![Term {
                is_const: true,
                mono: vec![],
                coeff: *c,
            }],
            Dim::Expr(p) => p.terms.clone(),
        }
    }

    /// Sort, merge like terms and drop zeros: the one place canonical form is established.
    fn from_terms(mut terms: Vec<Term>) -> Result<Dim, DimError> {
        for t in &mut terms {
            t.mono.sort();
            t.is_const = t.mono.is_empty();
        }
        terms.sort_by(|a, b| (a.is_const, &a.mono).cmp(&(b.is_const, &b.mono)));
        let mut merged: Vec<Term> = Vec::with_capacity(terms.len());
        for t in terms {
            match merged.last_mut() {
                Some(last) if last.mono == t.mono => {
                    last.coeff = last.coeff.checked_add(t.coeff).ok_or(DimError::Overflow)?;
                }
                _ => merged.push(t),
            }
        }
        merged.retain(|t| t.coeff != 0);
        if merged.len() > MAX_TERMS || merged.iter().any(|t| t.mono.len() > MAX_DEGREE) {
            return Err(DimError::TooComplex);
        }
        Ok(match merged.as_slice() {
            [] => Dim::Const(0),
            [t] if t.is_const => Dim::Const(t.coeff),
            _ => Dim::Expr(Arc::new(Poly { terms: merged })),
        })
    }

    fn atom(atom: Atom) -> Dim {
        Dim::Expr(Arc::new(Poly {
            terms: vec![Term {
                is_const: false,
                mono: vec![atom],
                coeff: 1,
            }],
        }))
    }

    pub fn add(&self, other: &Dim) -> Result<Dim, DimError> {
        if let (Dim::Const(a), Dim::Const(b)) = (self, other) {
            return a.checked_add(*b).map(Dim::Const).ok_or(DimError::Overflow);
        }
        let mut terms = self.terms();
        terms.extend(other.terms());
        Dim::from_terms(terms)
    }

    pub fn neg(&self) -> Result<Dim, DimError> {
        self.mul(&Dim::Const(-1))
    }

    pub fn sub(&self, other: &Dim) -> Result<Dim, DimError> {
        self.add(&other.neg()?)
    }

    pub fn mul(&self, other: &Dim) -> Result<Dim, DimError> {
        if let (Dim::Const(a), Dim::Const(b)) = (self, other) {
            return a.checked_mul(*b).map(Dim::Const).ok_or(DimError::Overflow);
        }
        let (a, b) = (self.terms(), other.terms());
        if a.len() * b.len() > MAX_TERMS * MAX_TERMS {
            return Err(DimError::TooComplex);
        }
        let mut terms = Vec::with_capacity(a.len() * b.len());
        for x in &a {
            for y in &b {
                let mut mono = x.mono.clone();
                mono.extend(y.mono.iter().cloned());
                terms.push(Term {
                    is_const: false,
                    mono,
                    coeff: x.coeff.checked_mul(y.coeff).ok_or(DimError::Overflow)?,
                });
            }
        }
        Dim::from_terms(terms)
    }

    /// Splits `self` by a positive constant `c` into `(q, r)` with `self == c*q + r`, where every
    /// coefficient of `r` lies in `0..c`.
    fn split_by(&self, c: i64) -> Result<(Dim, Dim), DimError> {
        let mut q = Vec::new();
        let mut r = Vec::new();
        for t in self.terms() {
            let (qc, rc) = (t.coeff.div_euclid(c), t.coeff.rem_euclid(c));
            q.push(Term {
                coeff: qc,
                ..t.clone()
            });
            r.push(Term { coeff: rc, ..t });
        }
        Ok((Dim::from_terms(q)?, Dim::from_terms(r)?))
    }

    /// `self / other` when `other` is one term `c*m` that divides every term of `self` exactly
    /// (so `(768*b*s) / (12*b*s)` is `64`); `None` otherwise.
    pub fn exact_div(&self, other: &Dim) -> Option<Dim> {
        let d = other.terms();
        let [Term {
            mono: m, coeff: c, ..
        }] = d.as_slice()
        else {
            return None;
        };
        let mut out = Vec::new();
        for t in self.terms() {
            if t.coeff % c != 0 {
                return None;
            }
            let mut rest = t.mono.clone();
            for a in m {
                let i = rest.iter().position(|x| x == a)?;
                rest.remove(i);
            }
            out.push(Term {
                is_const: false,
                mono: rest,
                coeff: t.coeff / c,
            });
        }
        Dim::from_terms(out).ok()
    }

    /// Floor division.
    pub fn floor_div(&self, other: &Dim) -> Result<Dim, DimError> {
        match (self, other) {
            (_, Dim::Const(0)) => Err(DimError::DivByZero),
            (Dim::Const(a), Dim::Const(b)) => floor_div_i64(*a, *b).map(Dim::Const),
            (_, Dim::Const(1)) => Ok(self.clone()),
            (_, Dim::Const(c)) if *c > 0 => {
                // floor((c*q + r) / c) == q + floor(r / c) for integer-valued q.
                let (q, r) = self.split_by(*c)?;
                match r {
                    // Every coefficient of r lies in 0..c, so a constant r divides to 0.
                    Dim::Const(_) => Ok(q),
                    _ => q.add(&Dim::atom(Atom::Div(Box::new(r), Box::new(other.clone())))),
                }
            }
            (Dim::Const(0), _) => Ok(Dim::Const(0)),
            _ if self == other => Ok(Dim::Const(1)),
            (_, Dim::Expr(_)) if self.exact_div(other).is_some() => {
                Ok(self.exact_div(other).expect("checked just above"))
            }
            _ => Ok(Dim::atom(Atom::Div(
                Box::new(self.clone()),
                Box::new(other.clone()),
            ))),
        }
    }

    /// Floor modulus: the result has the sign of the divisor, as in Python.
    pub fn floor_mod(&self, other: &Dim) -> Result<Dim, DimError> {
        match (self, other) {
            (_, Dim::Const(0)) => Err(DimError::DivByZero),
            (Dim::Const(a), Dim::Const(b)) => floor_mod_i64(*a, *b).map(Dim::Const),
            (_, Dim::Const(1 | -1)) => Ok(Dim::Const(0)),
            (_, Dim::Const(c)) if *c > 0 => {
                let (_, r) = self.split_by(*c)?;
                match r {
                    Dim::Const(_) => Ok(r),
                    _ => Ok(Dim::atom(Atom::Mod(Box::new(r), Box::new(other.clone())))),
                }
            }
            (Dim::Const(0), _) => Ok(Dim::Const(0)),
            _ if self == other => Ok(Dim::Const(0)),
            _ => Ok(Dim::atom(Atom::Mod(
                Box::new(self.clone()),
                Box::new(other.clone()),
            ))),
        }
    }

    /// The smaller of the two: decided where their difference is provably signed, else a
    /// `min` atom.
    pub fn minimum(&self, other: &Dim) -> Result<Dim, DimError> {
        if let (Dim::Const(a), Dim::Const(b)) = (self, other) {
            return Ok(Dim::Const(*a.min(b)));
        }
        if self.sub(other)?.is_nonnegative() {
            return Ok(other.clone());
        }
        if other.sub(self)?.is_nonnegative() {
            return Ok(self.clone());
        }
        let (a, b) = if self <= other {
            (self, other)
        } else {
            (other, self)
        };
        Ok(Dim::atom(Atom::Min(
            Box::new(a.clone()),
            Box::new(b.clone()),
        )))
    }

    /// The larger of the two (`-min(-a, -b)`).
    pub fn maximum(&self, other: &Dim) -> Result<Dim, DimError> {
        self.neg()?.minimum(&other.neg()?)?.neg()
    }

    /// Evaluates with every symbol looked up in `lookup`.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<i64, DimError> {
        match self {
            Dim::Const(c) => Ok(*c),
            Dim::Expr(p) => {
                let mut sum: i64 = 0;
                for t in &p.terms {
                    let mut prod = t.coeff;
                    for a in &t.mono {
                        let v = a.eval(lookup)?;
                        prod = prod.checked_mul(v).ok_or(DimError::Overflow)?;
                    }
                    sum = sum.checked_add(prod).ok_or(DimError::Overflow)?;
                }
                Ok(sum)
            }
        }
    }

    /// Replaces symbols by dims (those `lookup` returns `None` for stay symbolic), re-simplifying.
    pub fn substitute(&self, lookup: &dyn Fn(&str) -> Option<Dim>) -> Result<Dim, DimError> {
        match self {
            Dim::Const(_) => Ok(self.clone()),
            Dim::Expr(p) => {
                let mut sum = Dim::Const(0);
                for t in &p.terms {
                    let mut prod = Dim::Const(t.coeff);
                    for a in &t.mono {
                        prod = prod.mul(&a.substitute(lookup)?)?;
                    }
                    sum = sum.add(&prod)?;
                }
                Ok(sum)
            }
        }
    }

    /// Every symbol this dim mentions, in sorted order.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.collect_symbols(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_symbols(&self, out: &mut Vec<Arc<str>>) {
        if let Dim::Expr(p) = self {
            for t in &p.terms {
                for a in &t.mono {
                    match a {
                        Atom::Sym(s) => out.push(s.clone()),
                        Atom::Div(x, y) | Atom::Mod(x, y) | Atom::Min(x, y) => {
                            x.collect_symbols(out);
                            y.collect_symbols(out);
                        }
                    }
                }
            }
        }
    }

    /// Whether printing this dim needs parentheses when it is an operand of `*`, `/` or `mod`.
    fn is_simple(&self) -> bool {
        match self {
            Dim::Const(c) => *c >= 0,
            Dim::Expr(_) => self.as_sym().is_some(),
        }
    }
}

impl Atom {
    fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<i64, DimError> {
        match self {
            Atom::Sym(s) => lookup(s).ok_or_else(|| DimError::Unbound(s.to_string())),
            Atom::Div(a, b) => floor_div_i64(a.eval(lookup)?, b.eval(lookup)?),
            Atom::Mod(a, b) => floor_mod_i64(a.eval(lookup)?, b.eval(lookup)?),
            Atom::Min(a, b) => Ok(a.eval(lookup)?.min(b.eval(lookup)?)),
        }
    }

    fn substitute(&self, lookup: &dyn Fn(&str) -> Option<Dim>) -> Result<Dim, DimError> {
        match self {
            Atom::Sym(s) => Ok(lookup(s).unwrap_or_else(|| Dim::atom(self.clone()))),
            Atom::Div(a, b) => a.substitute(lookup)?.floor_div(&b.substitute(lookup)?),
            Atom::Mod(a, b) => a.substitute(lookup)?.floor_mod(&b.substitute(lookup)?),
            Atom::Min(a, b) => a.substitute(lookup)?.minimum(&b.substitute(lookup)?),
        }
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Const(v)
    }
}

impl From<i32> for Dim {
    fn from(v: i32) -> Dim {
        Dim::Const(v.into())
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Const(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<&str> for Dim {
    fn from(name: &str) -> Dim {
        Dim::sym(name)
    }
}

fn fmt_operand(d: &Dim, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if d.is_simple() {
        write!(f, "{d}")
    } else {
        write!(f, "({d})")
    }
}

fn fmt_atom(a: &Atom, alone: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let (x, y, op) = match a {
        Atom::Sym(s) => return f.write_str(s),
        Atom::Div(x, y) => (x, y, "/"),
        Atom::Mod(x, y) => (x, y, " mod "),
        Atom::Min(x, y) => return write!(f, "min({x}, {y})"),
    };
    if !alone {
        f.write_str("(")?;
    }
    fmt_operand(x, f)?;
    f.write_str(op)?;
    fmt_operand(y, f)?;
    if !alone {
        f.write_str(")")?;
    }
    Ok(())
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self {
            Dim::Const(c) => return write!(f, "{c}"),
            Dim::Expr(p) => p,
        };
        for (i, t) in p.terms.iter().enumerate() {
            let mag = t.coeff.unsigned_abs();
            if t.coeff < 0 {
                f.write_str("-")?;
            } else if i > 0 {
                f.write_str("+")?;
            }
            if t.mono.is_empty() {
                write!(f, "{mag}")?;
                continue;
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            // `x/2` may stand bare only as a whole term: `2*x/2` or `-x/2` would read back
            // with a different grouping.
            let alone = t.coeff == 1 && t.mono.len() == 1;
            for (j, a) in t.mono.iter().enumerate() {
                if j > 0 {
                    f.write_str("*")?;
                }
                fmt_atom(a, alone, f)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> Dim {
        Dim::sym(n)
    }

    #[test]
    fn dims_serialize_as_terms_and_come_back_canonical() {
        let two = Dim::Const(2);
        let q = s("n")
            .add(&Dim::Const(3))
            .unwrap()
            .floor_div(&Dim::Const(4));
        let m = s("n").floor_mod(&s("k")).unwrap();
        let e = two.mul(&s("seq")).unwrap().add(&q.unwrap()).unwrap();
        let e = e.mul(&m).unwrap().sub(&Dim::Const(7)).unwrap();
        for d in [Dim::Const(-5), s("batch"), e] {
            let bytes = postcard::to_stdvec(&d).unwrap();
            let back: Dim = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, d, "{d}");
        }
        // Terms written in any order, or alike, are merged as arithmetic would.
        let messy = DimRepr::Terms(vec![
            (1, vec![AtomRepr::Sym("b".into())]),
            (2, vec![AtomRepr::Sym("a".into())]),
            (3, vec![]),
            (-1, vec![AtomRepr::Sym("b".into())]),
        ]);
        let d = Dim::try_from(messy).unwrap();
        assert_eq!(
            d,
            Dim::Const(3)
                .add(&s("a").mul(&Dim::Const(2)).unwrap())
                .unwrap()
        );
        let bad = DimRepr::Terms(vec![(1, vec![AtomRepr::Sym("2x".into())])]);
        assert!(Dim::try_from(bad).is_err());
        let zero = DimRepr::Terms(vec![(
            1,
            vec![AtomRepr::Div(DimRepr::Const(1), DimRepr::Const(0))],
        )]);
        assert!(Dim::try_from(zero).is_err());
        // floor(floor(…/1)/1) nested a million deep: an error, not a stack overflow.
        let nested = |n: usize| {
            let mut b = [1u8, 1, 2, 1, 1].repeat(n);
            b.extend([0, 4]);
            b.extend([0u8, 2].repeat(n));
            b
        };
        assert_eq!(postcard::from_bytes::<Dim>(&nested(3)), Ok(Dim::Const(2)));
        assert!(postcard::from_bytes::<Dim>(&nested(1_000_000)).is_err());
    }
    fn c(v: i64) -> Dim {
        Dim::Const(v)
    }

    #[test]
    fn commutative_products_are_equal() {
        let seq = s("seq");
        assert_eq!(seq.mul(&c(2)).unwrap(), c(2).mul(&seq).unwrap());
        let b = s("batch");
        assert_eq!(seq.mul(&b).unwrap(), b.mul(&seq).unwrap());
        assert_eq!(seq.mul(&c(2)).unwrap().to_string(), "2*seq");
    }

    #[test]
    fn sums_merge_and_cancel() {
        let seq = s("seq");
        let two_seq = seq.add(&seq).unwrap();
        assert_eq!(two_seq, seq.mul(&c(2)).unwrap());
        assert_eq!(two_seq.sub(&two_seq).unwrap(), c(0));
        let e = seq.add(&c(1)).unwrap().sub(&c(1)).unwrap();
        assert_eq!(e, seq);
        assert_eq!(seq.sub(&c(1)).unwrap().to_string(), "seq-1");
        assert_eq!(c(3).sub(&seq).unwrap().to_string(), "-seq+3");
    }

    #[test]
    fn distributes() {
        let (a, b) = (s("a"), s("b"));
        let lhs = a.add(&b).unwrap().mul(&c(3)).unwrap();
        let rhs = a.mul(&c(3)).unwrap().add(&b.mul(&c(3)).unwrap()).unwrap();
        assert_eq!(lhs, rhs);
        assert_eq!(lhs.to_string(), "3*a+3*b");
    }

    #[test]
    fn floor_div_simplifies() {
        let seq = s("seq");
        let six_seq = seq.mul(&c(6)).unwrap();
        assert_eq!(six_seq.floor_div(&c(3)).unwrap(), seq.mul(&c(2)).unwrap());
        let plus5 = seq.add(&c(5)).unwrap();
        let plus1 = seq.add(&c(1)).unwrap();
        assert_eq!(
            plus5.floor_div(&c(2)).unwrap(),
            plus1.floor_div(&c(2)).unwrap().add(&c(2)).unwrap()
        );
        assert_eq!(plus1.floor_div(&c(2)).unwrap().to_string(), "(seq+1)/2");
        assert_eq!(seq.floor_div(&seq).unwrap(), c(1));
        assert_eq!(c(-7).floor_div(&c(2)).unwrap(), c(-4));
        let b = s("b");
        let bs = b.mul(&seq).unwrap();
        assert_eq!(
            bs.mul(&c(768))
                .unwrap()
                .floor_div(&bs.mul(&c(12)).unwrap())
                .unwrap(),
            c(64)
        );
        assert_eq!(
            bs.mul(&c(6)).unwrap().floor_div(&seq).unwrap(),
            b.mul(&c(6)).unwrap()
        );
        assert!(bs
            .floor_div(&seq.mul(&c(2)).unwrap())
            .unwrap()
            .as_const()
            .is_none());
        assert_eq!(seq.floor_div(&c(0)), Err(DimError::DivByZero));
        // A constant remainder is always below the divisor and vanishes.
        let e = seq
            .mul(&seq)
            .unwrap()
            .mul(&c(-2))
            .unwrap()
            .sub(&c(1))
            .unwrap();
        assert_eq!(e.floor_div(&c(2)).unwrap().to_string(), "-seq*seq-1");
    }

    #[test]
    fn floor_mod_simplifies() {
        let seq = s("seq");
        assert_eq!(seq.mul(&c(4)).unwrap().floor_mod(&c(2)).unwrap(), c(0));
        let m = seq.add(&c(3)).unwrap().floor_mod(&c(2)).unwrap();
        assert_eq!(m, seq.add(&c(1)).unwrap().floor_mod(&c(2)).unwrap());
        assert_eq!(m.to_string(), "(seq+1) mod 2");
        assert_eq!(c(-7).floor_mod(&c(2)).unwrap(), c(1));
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(c(i64::MAX).add(&c(1)), Err(DimError::Overflow));
        let big = s("n").mul(&c(i64::MAX)).unwrap();
        assert_eq!(big.mul(&c(2)), Err(DimError::Overflow));
        assert_eq!(c(i64::MIN).floor_div(&c(-1)), Err(DimError::Overflow));
    }

    #[test]
    fn explosive_products_are_refused() {
        let mut sum = Dim::Const(0);
        for n in ["a", "b", "c", "d", "e", "f"] {
            sum = sum.add(&s(n)).unwrap();
        }
        let mut p = sum.clone();
        let mut refused = false;
        for _ in 0..20 {
            match p.mul(&sum) {
                Ok(q) => p = q,
                Err(e) => {
                    assert_eq!(e, DimError::TooComplex);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
    }

    #[test]
    fn eval_and_substitute() {
        let e = s("a").mul(&s("b")).unwrap().add(&c(2)).unwrap();
        let look = |n: &str| match n {
            "a" => Some(3),
            "b" => Some(4),
            _ => None,
        };
        assert_eq!(e.eval(&look), Ok(14));
        assert_eq!(s("z").eval(&look), Err(DimError::Unbound("z".to_string())));
        let sub = e.substitute(&|n| (n == "a").then(|| c(5))).unwrap();
        assert_eq!(sub, s("b").mul(&c(5)).unwrap().add(&c(2)).unwrap());
        let d = s("n").floor_div(&c(2)).unwrap();
        assert_eq!(d.substitute(&|_| Some(c(9))).unwrap(), c(4));
    }
}
