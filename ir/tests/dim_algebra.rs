//! Properties of the dim algebra: simplification never changes a value, spelling does not
//! change the canonical form, and printed dims parse back to themselves.

use ir::{parse_graph, Dim};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum E {
    Sym(usize),
    Int(i64),
    Add(Box<E>, Box<E>),
    Sub(Box<E>, Box<E>),
    Mul(Box<E>, Box<E>),
    Div(Box<E>, Box<E>),
    Mod(Box<E>, Box<E>),
}

const SYMS: [&str; 3] = ["a", "b", "c"];

fn expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![(0usize..3).prop_map(E::Sym), (-6i64..7).prop_map(E::Int)];
    leaf.prop_recursive(4, 24, 2, |inner| {
        // Divisors are symbols or positive constants: dims divide by extents, never by zero.
        let divisor = prop_oneof![(0usize..3).prop_map(E::Sym), (1i64..6).prop_map(E::Int)];
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(x, y)| E::Add(Box::new(x), Box::new(y))),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| E::Sub(Box::new(x), Box::new(y))),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| E::Mul(Box::new(x), Box::new(y))),
            (inner.clone(), divisor.clone()).prop_map(|(x, y)| E::Div(Box::new(x), Box::new(y))),
            (inner, divisor).prop_map(|(x, y)| E::Mod(Box::new(x), Box::new(y))),
        ]
    })
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) - if b < 0 && a.rem_euclid(b) != 0 { 1 } else { 0 }
}

fn eval(e: &E, env: &[i64; 3]) -> i64 {
    match e {
        E::Sym(i) => env[*i],
        E::Int(v) => *v,
        E::Add(x, y) => eval(x, env) + eval(y, env),
        E::Sub(x, y) => eval(x, env) - eval(y, env),
        E::Mul(x, y) => eval(x, env) * eval(y, env),
        E::Div(x, y) => floor_div(eval(x, env), eval(y, env)),
        E::Mod(x, y) => {
            let (a, b) = (eval(x, env), eval(y, env));
            a - b * floor_div(a, b)
        }
    }
}

fn build(e: &E) -> Dim {
    match e {
        E::Sym(i) => Dim::sym(SYMS[*i]),
        E::Int(v) => Dim::Const(*v),
        E::Add(x, y) => build(x).add(&build(y)).unwrap(),
        E::Sub(x, y) => build(x).sub(&build(y)).unwrap(),
        E::Mul(x, y) => build(x).mul(&build(y)).unwrap(),
        E::Div(x, y) => build(x).floor_div(&build(y)).unwrap(),
        E::Mod(x, y) => build(x).floor_mod(&build(y)).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn simplification_preserves_values(e in expr(), a in 1i64..12, b in 1i64..12, c in 1i64..12) {
        let env = [a, b, c];
        let d = build(&e);
        let got = d.eval(&|s| SYMS.iter().position(|&n| n == s).map(|i| env[i])).unwrap();
        prop_assert_eq!(got, eval(&e, &env), "{} from {:?}", d, e);
    }

    #[test]
    fn spelling_does_not_matter(x in expr(), y in expr()) {
        let (dx, dy) = (build(&x), build(&y));
        prop_assert_eq!(dx.add(&dy).unwrap(), dy.add(&dx).unwrap());
        prop_assert_eq!(dx.mul(&dy).unwrap(), dy.mul(&dx).unwrap());
        prop_assert_eq!(dx.sub(&dx).unwrap(), Dim::Const(0));
        let two = Dim::Const(2);
        prop_assert_eq!(dx.mul(&two).unwrap(), dx.add(&dx).unwrap());
    }

    #[test]
    fn printed_dims_parse_back(e in expr()) {
        let d = build(&e);
        let text = format!("func @f {{\n  %0 = dims {{values=[{d}]}} : i64[1]\n  return %0\n}}\n");
        let g = parse_graph(&text).unwrap();
        let id = g.outputs()[0].1.node;
        match g.node(id).op() {
            ir::Op::Dims { values } => prop_assert_eq!(&values[0], &d, "{}", text),
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
