//! Values during import. Each ONNX value is an IR value, a value known at import time, or
//! both. Known values are what make shape computations fold: `Shape` yields the (possibly
//! symbolic) dims of its input, and `Gather`, `Concat`, `Unsqueeze`, arithmetic and friends
//! compute on them, so that `Reshape` and `Expand` receive static target shapes.

use ir::{DType, Data, Dim, Shape, Tensor, TensorType, Value};

/// A value known when the model is imported.
#[derive(Clone, Debug)]
pub enum Known {
    /// Concrete data.
    Data(Tensor),
    /// An integer scalar (`scalar`) or vector whose elements may be symbolic dims.
    Dims { dims: Vec<Dim>, scalar: bool },
    /// An ONNX sequence of known length: its tensors, and their element type (a sequence may
    /// be empty). Sequences live only at import; ops that take them see their tensors.
    Seq { items: Vec<V>, dtype: DType },
    /// An ONNX optional: its value (a tensor or a sequence) or none.
    Opt(Option<Box<V>>),
}

/// One ONNX value.
#[derive(Clone, Debug)]
pub struct V {
    /// The IR value, once materialized.
    pub value: Option<Value>,
    pub ty: TensorType,
    pub known: Option<Known>,
}

impl V {
    pub fn data(t: Tensor) -> V {
        V {
            value: None,
            ty: t.ty(),
            known: Some(Known::Data(t)),
        }
    }

    /// A sequence of known length.
    pub fn seq(items: Vec<V>, dtype: DType) -> V {
        V {
            value: None,
            ty: TensorType::new(dtype, Shape::scalar()),
            known: Some(Known::Seq { items, dtype }),
        }
    }

    /// An optional holding `item`, or none (`dtype` is then the element type it would have).
    pub fn optional(item: Option<V>, dtype: DType) -> V {
        V {
            value: None,
            ty: TensorType::new(dtype, Shape::scalar()),
            known: Some(Known::Opt(item.map(Box::new))),
        }
    }

    /// Known integer dims of `dtype` (an integer type).
    pub fn dims(dims: Vec<Dim>, scalar: bool, dtype: DType) -> V {
        let shape = if scalar {
            Shape::scalar()
        } else {
            Shape::from_usizes(&[dims.len()])
        };
        V {
            value: None,
            ty: TensorType::new(dtype, shape),
            known: Some(Known::Dims { dims, scalar }),
        }
    }

    /// The known elements as dims, for integer values (data or dims).
    pub fn known_dims(&self) -> Option<Vec<Dim>> {
        match &self.known {
            Some(Known::Dims { dims, .. }) => Some(dims.clone()),
            Some(Known::Data(t)) if t.dtype().is_int() => Some(
                (0..t.numel())
                    .map(|i| Dim::Const(t.data().get_i128(i) as i64))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The known elements as integers, when all are constants.
    pub fn known_ints(&self) -> Option<Vec<i64>> {
        self.known_dims()?.iter().map(Dim::as_const).collect()
    }

    /// The known value as a tensor, when it is fully constant.
    pub fn known_tensor(&self) -> Option<Tensor> {
        match &self.known {
            Some(Known::Data(t)) => Some(t.clone()),
            Some(Known::Dims { dims, scalar }) => {
                let v: Option<Vec<i64>> = dims.iter().map(Dim::as_const).collect();
                let v: Vec<i128> = v?.into_iter().map(i128::from).collect();
                let shape = if *scalar { vec![] } else { vec![v.len()] };
                Tensor::new(shape, Data::from_i128s(self.ty.dtype, &v)).ok()
            }
            Some(Known::Seq { .. } | Known::Opt(_)) | None => None,
        }
    }

    pub fn rank(&self) -> usize {
        self.ty.rank()
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }
}
