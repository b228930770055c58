//! Quantization operators, imported faithfully as integer and float arithmetic.

use super::Res;
use crate::onnx::import::{Ctx, Node};

macro_rules! todo_op {
    ($($f:ident $name:literal),*) => {$(
        pub fn $f(_: &mut Ctx, _: &Node) -> Res {
            Err(concat!($name, " is not supported yet").into())
        }
    )*};
}

todo_op!(
    quantize_linear "QuantizeLinear", dequantize_linear "DequantizeLinear",
    dynamic_quantize_linear "DynamicQuantizeLinear", matmul_integer "MatMulInteger",
    conv_integer "ConvInteger", qlinear_matmul "QLinearMatMul", qlinear_conv "QLinearConv",
    matmul_nbits "MatMulNBits"
);
