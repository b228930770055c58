//! Shapes (lists of symbolic dims) and tensor types (`f32[batch, 784]`).

use std::fmt;

use crate::dim::{Dim, DimError};
use crate::dtype::DType;

/// The dims of a tensor, outermost first. Rank 0 is a scalar.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Shape(Vec<Dim>);

/// Builds a [`Shape`] from integers and symbol names: `shape!["batch", 784]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => {
        $crate::Shape::new(vec![$($crate::Dim::from($d)),*])
    };
}

impl Shape {
    pub fn new(dims: Vec<Dim>) -> Shape {
        Shape(dims)
    }

    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn from_consts(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Const(d)).collect())
    }

    pub fn from_usizes(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::from(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    pub fn dim(&self, axis: usize) -> &Dim {
        &self.0[axis]
    }

    pub fn into_dims(self) -> Vec<Dim> {
        self.0
    }

    /// The dims as integers, when none is symbolic.
    pub fn as_consts(&self) -> Option<Vec<i64>> {
        self.0.iter().map(Dim::as_const).collect()
    }

    pub fn is_static(&self) -> bool {
        self.0.iter().all(|d| d.as_const().is_some())
    }

    /// The number of elements, as a dim; an error when the product overflows i64.
    pub fn numel(&self) -> Result<Dim, DimError> {
        self.0.iter().try_fold(Dim::Const(1), |acc, d| acc.mul(d))
    }

    /// Concrete extents with every symbol bound by `lookup`.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<Vec<i64>, DimError> {
        self.0.iter().map(|d| d.eval(lookup)).collect()
    }

    /// Matches a given shape against this declared one: ranks and fixed dims must agree, and
    /// each plain symbol takes the given extent, one value per symbol across calls (`bound`,
    /// pre-set values included). Given dims that are not constants match anything. The error
    /// says which axis disagrees and how.
    pub fn bind(
        &self,
        given: &Shape,
        bound: &mut std::collections::HashMap<String, i64>,
    ) -> Result<(), String> {
        if given.rank() != self.rank() {
            return Err(format!("rank {} instead of {}", given.rank(), self.rank()));
        }
        for (axis, (d, g)) in self.0.iter().zip(given.dims()).enumerate() {
            let Some(v) = g.as_const() else { continue };
            if let Some(c) = d.as_const() {
                if c != v {
                    return Err(format!("axis {axis} is {c}, not {v}"));
                }
            } else if let Some(s) = d.as_sym() {
                match bound.get(s) {
                    Some(&w) if w != v => {
                        return Err(format!("axis {axis} is `{s}`, which is already {w}"));
                    }
                    _ => {
                        bound.insert(s.to_string(), v);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn substitute(&self, lookup: &dyn Fn(&str) -> Option<Dim>) -> Result<Shape, DimError> {
        self.0
            .iter()
            .map(|d| d.substitute(lookup))
            .collect::<Result<_, _>>()
            .map(Shape)
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(dims: Vec<Dim>) -> Shape {
        Shape(dims)
    }
}

impl From<&[i64]> for Shape {
    fn from(dims: &[i64]) -> Shape {
        Shape::from_consts(dims)
    }
}

impl<const N: usize> From<[i64; N]> for Shape {
    fn from(dims: [i64; N]) -> Shape {
        Shape::from_consts(&dims)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The type of a value: element type and shape.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

impl fmt::Debug for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_and_display() {
        let s = shape!["batch", 784];
        assert_eq!(s.to_string(), "[batch, 784]");
        assert_eq!(
            TensorType::new(DType::F32, s).to_string(),
            "f32[batch, 784]"
        );
        assert_eq!(Shape::scalar().to_string(), "[]");
    }

    #[test]
    fn numel_is_symbolic_and_checked() {
        let s = shape!["batch", 4, 2];
        assert_eq!(
            s.numel().unwrap(),
            Dim::sym("batch").mul(&Dim::Const(8)).unwrap()
        );
        let big = shape![i64::MAX, 2];
        assert!(big.numel().is_err());
    }
}
