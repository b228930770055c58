//! `ai.onnx.ml` operators (trees, linear models, SVMs, preprocessing) as tensor computations.

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
    tree_ensemble_classifier "TreeEnsembleClassifier", tree_ensemble_regressor "TreeEnsembleRegressor",
    tree_ensemble "TreeEnsemble", linear_classifier "LinearClassifier",
    linear_regressor "LinearRegressor", svm_classifier "SVMClassifier", svm_regressor "SVMRegressor",
    scaler "Scaler", normalizer "Normalizer", binarizer "Binarizer",
    array_feature_extractor "ArrayFeatureExtractor", label_encoder "LabelEncoder"
);
