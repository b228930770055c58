//! Op attributes: the value types ops carry (axes, shapes, dtypes, enums, constant tensors) and
//! their codec to and from the literal syntax of `.kir` (`{axes=[0, 2], kind=max}`).
//!
//! The parser turns attribute text into [`Lit`]s without knowing which op it is reading; each
//! attribute type then interprets the literal with [`Attr::from_lit`], so adding an attribute type
//! never touches the parser.

use std::fmt::{self, Write};
use std::sync::Arc;

use half::{bf16, f16};

use crate::dim::Dim;
use crate::dtype::DType;
use crate::shape::{Shape, TensorType};
use crate::tensor::{Data, Tensor};

/// An attribute literal as written in text.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Lit {
    /// A number exactly as written (`-3`, `0.5`, `1e-7`, `nan`, `-inf`), so that each attribute
    /// type parses it at its own precision.
    Num(String),
    Ident(String),
    Str(String),
    /// A dimension expression that is not a plain number or identifier (`2*seq`).
    Dim(Dim),
    List(Vec<Lit>),
    /// A reference to a named module constant (`@w1`).
    Ref(String),
}

/// What an attribute may consult while being decoded: the declared result types of its node
/// and the module's named constants.
pub struct AttrCtx<'a> {
    pub results: &'a [TensorType],
    pub constant: &'a dyn Fn(&str) -> Option<Tensor>,
    /// The body block written after the node's type, for kernel ops.
    pub region: Option<crate::region::Region>,
}

/// A type that can be an op attribute.
pub trait Attr: Sized + Clone + PartialEq {
    fn to_lit(&self) -> Lit;
    fn from_lit(lit: &Lit, ctx: &AttrCtx) -> Result<Self, String>;
}

fn describe(lit: &Lit) -> String {
    let mut s = String::new();
    lit.write(&mut s);
    if s.len() > 40 {
        s.truncate(40);
        s.push_str("...");
    }
    s
}

impl Attr for i64 {
    fn to_lit(&self) -> Lit {
        Lit::Num(self.to_string())
    }
    fn from_lit(lit: &Lit, _: &AttrCtx) -> Result<i64, String> {
        match lit {
            Lit::Num(s) => s
                .parse::<i64>()
                .map_err(|_| format!("expected an integer that fits i64, got `{s}`")),
            _ => Err(format!("expected an integer, got `{}`", describe(lit))),
        }
    }
}

impl Attr for bool {
    fn to_lit(&self) -> Lit {
        Lit::Ident(self.to_string())
    }
    fn from_lit(lit: &Lit, _: &AttrCtx) -> Result<bool, String> {
        match lit {
            Lit::Ident(s) if s == "true" => Ok(true),
            Lit::Ident(s) if s == "false" => Ok(false),
            _ => Err(format!("expected true or false, got `{}`", describe(lit))),
        }
    }
}

impl Attr for String {
    fn to_lit(&self) -> Lit {
        Lit::Str(self.clone())
    }
    fn from_lit(lit: &Lit, _: &AttrCtx) -> Result<String, String> {
        match lit {
            Lit::Str(s) => Ok(s.clone()),
            _ => Err(format!("expected a string, got `{}`", describe(lit))),
        }
    }
}

impl Attr for DType {
    fn to_lit(&self) -> Lit {
        Lit::Ident(self.name().to_string())
    }
    fn from_lit(lit: &Lit, _: &AttrCtx) -> Result<DType, String> {
        match lit {
            Lit::Ident(s) => DType::from_name(s).ok_or_else(|| format!("unknown dtype `{s}`")),
            _ => Err(format!("expected a dtype, got `{}`", describe(lit))),
        }
    }
}

impl Attr for Dim {
    fn to_lit(&self) -> Lit {
        match (self.as_const(), self.as_sym()) {
            (Some(c), _) => Lit::Num(c.to_string()),
            (_, Some(s)) => Lit::Ident(s.to_string()),
            _ => Lit::Dim(self.clone()),
        }
    }
    fn from_lit(lit: &Lit, ctx: &AttrCtx) -> Result<Dim, String> {
        match lit {
            Lit::Num(_) => i64::from_lit(lit, ctx).map(Dim::Const),
            Lit::Ident(s) if crate::dim::is_valid_symbol(s) => Ok(Dim::sym(s)),
            Lit::Ident(s) => Err(format!("`{s}` cannot name a dimension")),
            Lit::Dim(d) => Ok(d.clone()),
            _ => Err(format!("expected a dimension, got `{}`", describe(lit))),
        }
    }
}

impl<T: Attr> Attr for Vec<T> {
    fn to_lit(&self) -> Lit {
        Lit::List(self.iter().map(Attr::to_lit).collect())
    }
    fn from_lit(lit: &Lit, ctx: &AttrCtx) -> Result<Vec<T>, String> {
        match lit {
            Lit::List(items) => items.iter().map(|l| T::from_lit(l, ctx)).collect(),
            _ => Err(format!("expected a list, got `{}`", describe(lit))),
        }
    }
}

impl Attr for Shape {
    fn to_lit(&self) -> Lit {
        self.dims().to_vec().to_lit()
    }
    fn from_lit(lit: &Lit, ctx: &AttrCtx) -> Result<Shape, String> {
        Vec::<Dim>::from_lit(lit, ctx).map(Shape::new)
    }
}

/// Attributes that are not written in text but read off the node's declared result types.
impl Attr for TensorType {
    fn to_lit(&self) -> Lit {
        Lit::Ident(self.to_string())
    }
    fn from_lit(_: &Lit, _: &AttrCtx) -> Result<TensorType, String> {
        Err("a type is not written as an attribute".to_string())
    }
}

/// Declares a closed enum attribute whose literals are bare identifiers.
macro_rules! ident_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum $name { $($(#[$vm])* $var),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            pub fn name(self) -> &'static str {
                match self { $($name::$var => $text),* }
            }
        }

        impl Attr for $name {
            fn to_lit(&self) -> Lit {
                Lit::Ident(self.name().to_string())
            }
            fn from_lit(lit: &Lit, _: &AttrCtx) -> Result<$name, String> {
                let names = [$($text),*];
                match lit {
                    Lit::Ident(s) => $name::ALL
                        .iter()
                        .copied()
                        .find(|v| v.name() == s)
                        .ok_or_else(|| format!("expected one of {}, got `{s}`", names.join(", "))),
                    _ => Err(format!("expected one of {}, got `{}`", names.join(", "), describe(lit))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

ident_enum!(
    /// The combining function of `reduce_window`.
    ReduceKind { Sum = "sum", Max = "max", Min = "min", Prod = "prod" }
);

ident_enum!(
    /// How `pad` fills the border.
    PadMode {
        /// With the scalar second operand.
        Constant = "constant",
        /// Repeating the edge element.
        Edge = "edge",
        /// Mirroring without repeating the edge element.
        Reflect = "reflect",
        /// Wrapping around to the other side.
        Wrap = "wrap",
    }
);

ident_enum!(
    /// How `scatter_nd` combines an update with the element it lands on.
    ScatterReduction { None = "none", Add = "add", Mul = "mul", Max = "max", Min = "min" }
);

/// The value of a `constant` node: a tensor, optionally named. Named constants print as `@name`
/// references to a module-level `const` definition; unnamed ones print inline.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConstValue {
    pub name: Option<Arc<str>>,
    pub tensor: Tensor,
}

impl Attr for ConstValue {
    fn to_lit(&self) -> Lit {
        match &self.name {
            Some(n) => Lit::Ref(n.to_string()),
            None => tensor_to_lit(&self.tensor),
        }
    }
    fn from_lit(lit: &Lit, ctx: &AttrCtx) -> Result<ConstValue, String> {
        let ty = ctx
            .results
            .first()
            .ok_or("a constant needs a result type")?;
        match lit {
            Lit::Ref(name) => {
                let tensor =
                    (ctx.constant)(name).ok_or_else(|| format!("undefined constant @{name}"))?;
                Ok(ConstValue {
                    name: Some(name.as_str().into()),
                    tensor,
                })
            }
            _ => Ok(ConstValue {
                name: None,
                tensor: tensor_from_lit(lit, ty)?,
            }),
        }
    }
}

fn float_text(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:?}")
    }
}

fn f32_text(x: f32) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        float_text(f64::from(x))
    }
}

fn element_lit(d: &Data, i: usize) -> Lit {
    match d {
        Data::F16(v) => Lit::Num(f32_text(v[i].to_f32())),
        Data::BF16(v) => Lit::Num(f32_text(v[i].to_f32())),
        Data::F32(v) => Lit::Num(f32_text(v[i])),
        Data::F64(v) => Lit::Num(float_text(v[i])),
        Data::Bool(v) => Lit::Ident(v[i].to_string()),
        d if d.dtype().is_narrow() && d.dtype().is_float() => Lit::Num(float_text(d.get_f64(i))),
        _ => Lit::Num(d.get_i128(i).to_string()),
    }
}

/// A flat list of elements; a single element when all are equal (a splat), which is also how a
/// scalar prints.
pub fn tensor_to_lit(t: &Tensor) -> Lit {
    let d = t.data();
    let n = t.numel();
    let splat = n > 1 && d.is_splat();
    if splat || (n == 1 && t.shape().is_empty()) {
        return element_lit(d, 0);
    }
    Lit::List((0..n).map(|i| element_lit(d, i)).collect())
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "nan" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => text.parse::<f64>().ok(),
    }
}

fn parse_f32(text: &str) -> Option<f32> {
    match text {
        "nan" => Some(f32::NAN),
        "inf" => Some(f32::INFINITY),
        "-inf" => Some(f32::NEG_INFINITY),
        _ => text.parse::<f32>().ok(),
    }
}

fn element_text(lit: &Lit) -> Result<&str, String> {
    match lit {
        Lit::Num(s) | Lit::Ident(s) => Ok(s),
        _ => Err(format!("expected a number, got `{}`", describe(lit))),
    }
}

/// The most elements a single-value literal may expand to.
const MAX_SPLAT: usize = 1 << 24;

/// Decodes the elements of a tensor of type `ty` (which must be static). Nested lists are
/// read in row-major order; a single element fills the whole tensor.
pub fn tensor_from_lit(lit: &Lit, ty: &TensorType) -> Result<Tensor, String> {
    let dims = ty
        .shape
        .as_consts()
        .ok_or_else(|| format!("a constant needs a static shape, got {}", ty.shape))?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in constant")))
        .collect::<Result<_, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 32)
        .ok_or_else(|| format!("constant of shape {} is too large", ty.shape))?;
    if !matches!(lit, Lit::List(_)) && n > MAX_SPLAT {
        return Err(format!(
            "a splat constant of {n} elements is too large; broadcast a scalar instead"
        ));
    }
    fn flatten<'a>(l: &'a Lit, out: &mut Vec<&'a Lit>) {
        match l {
            Lit::List(items) => items.iter().for_each(|i| flatten(i, out)),
            _ => out.push(l),
        }
    }
    let items: Vec<&Lit> = match lit {
        Lit::List(_) => {
            let mut items = Vec::new();
            flatten(lit, &mut items);
            if items.len() != n {
                return Err(format!(
                    "constant of type {ty} needs {n} elements, got {}",
                    items.len()
                ));
            }
            items
        }
        // A splat: decode the one element, then repeat the decoded value.
        _ => {
            let one = TensorType::new(ty.dtype, Shape::scalar());
            let t = tensor_from_lit(&Lit::List(vec![lit.clone()]), &one)?;
            let data = t.data().take_all(&vec![0; n]);
            return Tensor::new(shape, data).map_err(|e| e.to_string());
        }
    };
    macro_rules! ints {
        ($t:ty, $v:ident) => {
            Data::$v(
                items
                    .iter()
                    .map(|l| {
                        let s = element_text(l)?;
                        s.parse::<$t>()
                            .map_err(|_| format!("`{s}` is not a valid {} value", ty.dtype))
                    })
                    .collect::<Result<_, String>>()?,
            )
        };
    }
    let floats = |conv: &dyn Fn(&str) -> Option<f64>| -> Result<Vec<f64>, String> {
        items
            .iter()
            .map(|l| {
                let s = element_text(l)?;
                conv(s).ok_or_else(|| format!("`{s}` is not a valid {} value", ty.dtype))
            })
            .collect()
    };
    let data = match ty.dtype {
        DType::F32 => Data::F32(
            items
                .iter()
                .map(|l| {
                    let s = element_text(l)?;
                    parse_f32(s).ok_or_else(|| format!("`{s}` is not a valid f32 value"))
                })
                .collect::<Result<_, String>>()?,
        ),
        DType::F64 => Data::F64(floats(&parse_float)?),
        DType::F16 => Data::F16(
            floats(&|s| parse_f32(s).map(f64::from))?
                .into_iter()
                .map(|x| f16::from_f32(x as f32))
                .collect(),
        ),
        DType::BF16 => Data::BF16(
            floats(&|s| parse_f32(s).map(f64::from))?
                .into_iter()
                .map(|x| bf16::from_f32(x as f32))
                .collect(),
        ),
        DType::I8 => ints!(i8, I8),
        DType::I16 => ints!(i16, I16),
        DType::I32 => ints!(i32, I32),
        DType::I64 => ints!(i64, I64),
        DType::U8 => ints!(u8, U8),
        DType::U16 => ints!(u16, U16),
        DType::U32 => ints!(u32, U32),
        DType::U64 => ints!(u64, U64),
        d @ (DType::I4
        | DType::U4
        | DType::I2
        | DType::U2
        | DType::F8E4M3FN
        | DType::F8E4M3FNUZ
        | DType::F8E5M2
        | DType::F8E5M2FNUZ
        | DType::F8E8M0
        | DType::F4E2M1) => {
            let v = if d.is_float() {
                floats(&|s| parse_float(s))?
            } else {
                items
                    .iter()
                    .map(|l| {
                        let s = element_text(l)?;
                        s.parse::<i128>()
                            .map(|x| x as f64)
                            .map_err(|_| format!("`{s}` is not a valid {d} value"))
                    })
                    .collect::<Result<Vec<_>, String>>()?
            };
            // Exact values only: a literal must name a representable element.
            let data = Data::from_f64s_narrow(d, &v, false);
            for (i, &x) in v.iter().enumerate() {
                let back = data.get_f64(i);
                if !(back == x || back.is_nan() && x.is_nan()) {
                    return Err(format!("`{x}` is not a {d} value"));
                }
            }
            data
        }
        DType::Bool => Data::Bool(
            items
                .iter()
                .map(|l| match element_text(l)? {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    s => Err(format!("`{s}` is not a valid bool value")),
                })
                .collect::<Result<_, String>>()?,
        ),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// Whether `s` can be written without quotes after `@` or `%`.
pub fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Writes `s` as a double-quoted string with escapes.
pub fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes `@name`, quoting the name when it is not an identifier.
pub fn write_at_name(out: &mut String, name: &str) {
    out.push('@');
    if is_ident(name) {
        out.push_str(name);
    } else {
        write_quoted(out, name);
    }
}

impl Lit {
    pub fn write(&self, out: &mut String) {
        match self {
            Lit::Num(s) | Lit::Ident(s) => out.push_str(s),
            Lit::Str(s) => write_quoted(out, s),
            Lit::Dim(d) => {
                let _ = write!(out, "{d}");
            }
            Lit::List(items) => {
                out.push('[');
                for (i, l) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    l.write(out);
                }
                out.push(']');
            }
            Lit::Ref(name) => write_at_name(out, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_for(results: &[TensorType]) -> AttrCtx<'_> {
        AttrCtx {
            region: None,
            results,
            constant: &|_| None,
        }
    }

    #[test]
    fn tensor_literals_round_trip() {
        let ty = TensorType::new(DType::F32, [4]);
        let t = Tensor::from_vec(vec![4], vec![0.1f32, -0.0, f32::INFINITY, 1e-30]).unwrap();
        let lit = tensor_to_lit(&t);
        let mut s = String::new();
        lit.write(&mut s);
        assert_eq!(s, "[0.1, -0.0, inf, 1e-30]");
        assert_eq!(tensor_from_lit(&lit, &ty).unwrap(), t);
    }

    #[test]
    fn splats_expand() {
        let ty = TensorType::new(DType::I32, [2, 2]);
        let t = tensor_from_lit(&Lit::Num("7".into()), &ty).unwrap();
        assert_eq!(t.as_slice::<i32>(), Some(&[7, 7, 7, 7][..]));
        assert_eq!(tensor_to_lit(&t), Lit::Num("7".into()));
    }

    #[test]
    fn bad_literals_are_errors() {
        let ty = TensorType::new(DType::U8, [2]);
        let e = tensor_from_lit(&Lit::List(vec![Lit::Num("1".into())]), &ty).unwrap_err();
        assert_eq!(e, "constant of type u8[2] needs 2 elements, got 1");
        let e = tensor_from_lit(&Lit::Num("300".into()), &ty).unwrap_err();
        assert_eq!(e, "`300` is not a valid u8 value");
        let results = [ty];
        let e = i64::from_lit(&Lit::Num("99999999999999999999".into()), &ctx_for(&results));
        assert!(e.unwrap_err().contains("fits i64"));
    }

    #[test]
    fn enums_decode_by_name() {
        let c = ctx_for(&[]);
        assert_eq!(
            PadMode::from_lit(&Lit::Ident("edge".into()), &c),
            Ok(PadMode::Edge)
        );
        let e = ReduceKind::from_lit(&Lit::Ident("mean".into()), &c).unwrap_err();
        assert_eq!(e, "expected one of sum, max, min, prod, got `mean`");
    }
}
