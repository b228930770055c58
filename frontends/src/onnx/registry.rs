//! The op registry: (domain, op type, first opset version) → import function. A node binds to
//! the entry with the highest version not above the model's opset for its domain, so each
//! function serves a range of versions and a semantic change is a new row.

use crate::onnx::OpError;

use super::import::{Ctx, Node};
use super::ops::{
    attention, control, dynamic, ew, misc, ml, nn, qlinear, quant, reduce, resize, rnn, sample,
    seq, shape, spectral, stateful,
};
use super::value::V;

pub type ImportFn = fn(&mut Ctx, &Node) -> Result<Vec<V>, OpError>;

macro_rules! table {
    ($($domain:literal { $($op:literal $since:literal => $f:path),* $(,)? })*) => {
        static TABLE: &[(&str, &str, i64, ImportFn)] = &[
            $($(($domain, $op, $since, $f),)*)*
        ];
    };
}

table! {
    "" {
        "Abs" 1 => ew::unary, "Neg" 1 => ew::unary, "Exp" 1 => ew::unary, "Log" 1 => ew::unary,
        "Sqrt" 1 => ew::unary, "Reciprocal" 1 => ew::unary, "Sin" 7 => ew::unary,
        "Cos" 7 => ew::unary, "Tan" 7 => ew::unary, "Asin" 7 => ew::unary, "Acos" 7 => ew::unary,
        "Atan" 7 => ew::unary, "Sinh" 9 => ew::unary, "Cosh" 9 => ew::unary,
        "Asinh" 9 => ew::unary, "Acosh" 9 => ew::unary, "Atanh" 9 => ew::unary,
        "Tanh" 1 => ew::unary, "Sigmoid" 1 => ew::unary, "Erf" 9 => ew::unary,
        "Floor" 1 => ew::unary, "Ceil" 1 => ew::unary, "Round" 11 => ew::unary,
        "Sign" 9 => ew::unary, "Not" 1 => ew::unary, "BitwiseNot" 18 => ew::unary,
        "IsNaN" 9 => ew::unary, "IsInf" 10 => ew::is_inf,
        "Add" 1 => ew::binary, "Sub" 1 => ew::binary, "Mul" 1 => ew::binary,
        "Div" 1 => ew::binary, "Pow" 1 => ew::binary, "And" 1 => ew::binary,
        "Or" 1 => ew::binary, "Xor" 1 => ew::binary, "Equal" 1 => ew::binary,
        "Less" 1 => ew::binary, "LessOrEqual" 12 => ew::binary, "Greater" 1 => ew::binary,
        "GreaterOrEqual" 12 => ew::binary, "BitwiseAnd" 18 => ew::binary,
        "BitwiseOr" 18 => ew::binary, "BitwiseXor" 18 => ew::binary, "Mod" 10 => ew::binary,
        "BitShift" 11 => ew::binary,
        "Max" 1 => ew::variadic, "Min" 1 => ew::variadic, "Sum" 1 => ew::variadic,
        "Mean" 1 => ew::variadic,
        "Where" 9 => ew::where_, "Clip" 1 => ew::clip_v1, "Clip" 11 => ew::clip,
        "Relu" 1 => ew::activation, "LeakyRelu" 1 => ew::activation, "Elu" 1 => ew::activation,
        "Selu" 1 => ew::activation, "Celu" 12 => ew::activation,
        "HardSigmoid" 1 => ew::activation, "HardSwish" 14 => ew::activation,
        "Softplus" 1 => ew::activation, "Softsign" 1 => ew::activation,
        "Mish" 18 => ew::activation, "Gelu" 20 => ew::activation,
        "ThresholdedRelu" 10 => ew::activation, "Shrink" 9 => ew::activation,
        "Swish" 24 => ew::activation, "PRelu" 1 => ew::prelu,
        "Col2Im" 18 => misc::col2im, "TfIdfVectorizer" 9 => misc::tfidf_vectorizer, "DFT" 17 => spectral::dft_op, "STFT" 17 => spectral::stft,
        "GridSample" 16 => sample::grid_sample, "AffineGrid" 20 => sample::affine_grid,
        "CausalConvWithState" 27 => stateful::causal_conv_with_state,
        "LinearAttention" 27 => stateful::linear_attention,
        "SequenceEmpty" 11 => seq::sequence_empty,
        "SequenceConstruct" 11 => seq::sequence_construct,
        "SequenceInsert" 11 => seq::sequence_insert, "SequenceAt" 11 => seq::sequence_at,
        "SequenceErase" 11 => seq::sequence_erase, "SequenceLength" 11 => seq::sequence_length,
        "SplitToSequence" 11 => seq::split_to_sequence,
        "ConcatFromSequence" 11 => seq::concat_from_sequence, "SequenceMap" 17 => seq::sequence_map,
        "Optional" 15 => seq::optional, "OptionalHasElement" 15 => seq::optional_has_element,
        "OptionalGetElement" 15 => seq::optional_get_element,
        "Identity" 1 => ew::identity, "Cast" 1 => ew::cast, "BitCast" 26 => ew::bitcast, "CastLike" 15 => ew::cast_like,
        "Dropout" 1 => ew::dropout, "Constant" 1 => ew::constant,
        "ConstantOfShape" 9 => ew::constant_of_shape,
        "Shape" 1 => shape::shape, "Size" 1 => shape::size, "Reshape" 1 => shape::reshape_v1,
        "Reshape" 5 => shape::reshape, "Flatten" 1 => shape::flatten,
        "Squeeze" 1 => shape::squeeze, "Unsqueeze" 1 => shape::unsqueeze,
        "Transpose" 1 => shape::transpose, "Concat" 1 => shape::concat,
        "Split" 1 => shape::split, "Slice" 1 => shape::slice_v1, "Slice" 10 => shape::slice,
        "Gather" 1 => shape::gather, "GatherElements" 11 => shape::gather_elements,
        "GatherND" 11 => shape::gather_nd, "ScatterND" 11 => shape::scatter_nd,
        "ScatterElements" 11 => shape::scatter_elements, "Scatter" 9 => shape::scatter_elements,
        "Expand" 8 => shape::expand, "Tile" 6 => shape::tile, "Pad" 1 => shape::pad_v1,
        "Pad" 11 => shape::pad, "Range" 11 => shape::range, "OneHot" 9 => shape::one_hot,
        "Trilu" 14 => shape::trilu, "CumSum" 11 => shape::cumulative,
        "CumProd" 26 => shape::cumulative, "EyeLike" 9 => shape::eye_like,
        "DepthToSpace" 1 => shape::depth_to_space, "SpaceToDepth" 1 => shape::space_to_depth,
        "ReduceSum" 1 => reduce::reduce, "ReduceMean" 1 => reduce::reduce,
        "ReduceMax" 1 => reduce::reduce, "ReduceMin" 1 => reduce::reduce,
        "ReduceProd" 1 => reduce::reduce, "ReduceL1" 1 => reduce::reduce,
        "ReduceL2" 1 => reduce::reduce, "ReduceLogSum" 1 => reduce::reduce,
        "ReduceLogSumExp" 1 => reduce::reduce, "ReduceSumSquare" 1 => reduce::reduce,
        "ArgMax" 1 => reduce::arg, "ArgMin" 1 => reduce::arg,
        "MatMul" 1 => nn::matmul, "Gemm" 1 => nn::gemm, "Conv" 1 => nn::conv,
        "ConvTranspose" 1 => nn::conv_transpose, "MaxPool" 1 => nn::pool,
        "AveragePool" 1 => nn::pool, "LpPool" 2 => nn::pool,
        "GlobalAveragePool" 1 => nn::global_pool, "GlobalMaxPool" 1 => nn::global_pool,
        "GlobalLpPool" 2 => nn::global_pool,
        "BatchNormalization" 1 => nn::batch_norm,
        "InstanceNormalization" 1 => nn::instance_norm,
        "LayerNormalization" 17 => nn::layer_norm, "GroupNormalization" 18 => nn::group_norm,
        "RMSNormalization" 23 => nn::rms_norm, "LpNormalization" 1 => nn::lp_norm,
        "MeanVarianceNormalization" 9 => nn::mean_variance_norm,
        "Softmax" 1 => nn::softmax_v1, "Softmax" 13 => nn::softmax,
        "LogSoftmax" 1 => nn::softmax_v1, "LogSoftmax" 13 => nn::softmax,
        "Hardmax" 1 => nn::softmax_v1, "Hardmax" 13 => nn::softmax,
        "NonZero" 9 => dynamic::nonzero, "Compress" 9 => dynamic::compress,
        "NonMaxSuppression" 10 => dynamic::non_max_suppression, "Unique" 11 => dynamic::unique,
        "LRN" 1 => nn::lrn, "Einsum" 12 => nn::einsum, "TopK" 1 => nn::topk,
        "Attention" 23 => attention::attention, "RotaryEmbedding" 23 => attention::rotary_embedding,
        "Resize" 10 => resize::resize, "Upsample" 7 => resize::upsample,
        "NegativeLogLikelihoodLoss" 12 => nn::nll_loss,
        "SoftmaxCrossEntropyLoss" 12 => nn::softmax_cross_entropy,
        "CenterCropPad" 18 => misc::center_crop_pad, "HannWindow" 17 => misc::window,
        "HammingWindow" 17 => misc::window, "BlackmanWindow" 17 => misc::window,
        "ReverseSequence" 10 => misc::reverse_sequence, "TensorScatter" 24 => misc::tensor_scatter,
        "SwiGLU" 1 => misc::swiglu,
        "Scan" 8 => control::scan, "If" 1 => control::if_, "Loop" 1 => control::loop_,
        "LSTM" 1 => rnn::lstm, "GRU" 1 => rnn::gru, "RNN" 1 => rnn::rnn,
        "QuantizeLinear" 10 => quant::quantize_linear,
        "DequantizeLinear" 10 => quant::dequantize_linear,
        "DynamicQuantizeLinear" 11 => quant::dynamic_quantize_linear,
        "MatMulInteger" 10 => quant::matmul_integer, "ConvInteger" 10 => quant::conv_integer,
        "QLinearMatMul" 10 => quant::qlinear_matmul, "QLinearConv" 10 => quant::qlinear_conv,
    }
    "com.microsoft" {
        "MatMulNBits" 1 => quant::matmul_nbits,
        "QGemm" 1 => qlinear::qgemm,
        // onnxruntime's own Q/DQ (16-bit and 4-bit types before opset 21, or asked for):
        // ONNX's semantics.
        "QuantizeLinear" 1 => quant::quantize_linear,
        "DequantizeLinear" 1 => quant::dequantize_linear,
        "MatMulIntegerToFloat" 1 => qlinear::matmul_integer_to_float,
        "DynamicQuantizeMatMul" 1 => qlinear::dynamic_quantize_matmul,
        "QLinearAdd" 1 => qlinear::qlinear, "QLinearMul" 1 => qlinear::qlinear,
        "QLinearSigmoid" 1 => qlinear::qlinear, "QLinearLeakyRelu" 1 => qlinear::qlinear,
        "QLinearSoftmax" 1 => qlinear::qlinear, "QLinearConcat" 1 => qlinear::qlinear,
        "QLinearGlobalAveragePool" 1 => qlinear::qlinear,
        "QLinearAveragePool" 1 => qlinear::qlinear, "QLinearReduceMean" 1 => qlinear::qlinear,
        "QLinearWhere" 1 => qlinear::qlinear,
        "DynamicQuantizeLSTM" 1 => rnn::dynamic_quantize_lstm,
    }
    "ai.onnx.ml" {
        "TreeEnsembleClassifier" 1 => ml::tree_ensemble_classifier,
        "TreeEnsembleRegressor" 1 => ml::tree_ensemble_regressor,
        "TreeEnsemble" 5 => ml::tree_ensemble,
        "LinearClassifier" 1 => ml::linear_classifier,
        "LinearRegressor" 1 => ml::linear_regressor,
        "SVMClassifier" 1 => ml::svm_classifier, "SVMRegressor" 1 => ml::svm_regressor,
        "Scaler" 1 => ml::scaler, "Normalizer" 1 => ml::normalizer,
        "Binarizer" 1 => ml::binarizer,
        "ArrayFeatureExtractor" 1 => ml::array_feature_extractor,
        "LabelEncoder" 2 => ml::label_encoder,
    }
}

/// The import function for `op` in `domain` at `version`.
pub fn lookup(domain: &str, op: &str, version: i64) -> Option<ImportFn> {
    TABLE
        .iter()
        .filter(|(d, o, since, _)| *d == domain && *o == op && *since <= version)
        .max_by_key(|(_, _, since, _)| *since)
        .map(|(_, _, _, f)| *f)
}

/// Whether kiln imports `op` of `domain` at opset `version`.
pub fn is_supported(domain: &str, op: &str, version: i64) -> bool {
    lookup(domain, op, version).is_some()
}

/// Every registered (domain, op, first version).
pub fn supported_ops() -> Vec<(&'static str, &'static str, i64)> {
    TABLE.iter().map(|(d, o, v, _)| (*d, *o, *v)).collect()
}
