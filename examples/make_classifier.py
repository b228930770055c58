"""Builds examples/classifier.onnx (a small image classifier: conv, batch norm, ReLU, pooling,
gemm, softmax) with seeded random weights, its inputs and onnxruntime's outputs.

    python3 examples/make_classifier.py   # needs numpy, onnx, onnxruntime
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)


def weight(name, *shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


inits = [
    weight("conv1_w", 8, 3, 3, 3),
    weight("conv1_b", 8),
    weight("bn_scale", 8, scale=1.0),
    weight("bn_bias", 8),
    weight("bn_mean", 8, scale=0.1),
    numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_var"),
    weight("dw_w", 8, 1, 3, 3),
    weight("fc_w", 10, 8),
    weight("fc_b", 10),
]
nodes = [
    helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b1"]),
    helper.make_node("Relu", ["b1"], ["r1"]),
    helper.make_node("Conv", ["r1", "dw_w"], ["c2"], group=8, pads=[1, 1, 1, 1], strides=[2, 2]),
    helper.make_node("Relu", ["c2"], ["r2"]),
    helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
    helper.make_node("Flatten", ["g"], ["f"]),
    helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
]
graph = helper.make_graph(
    nodes,
    "classifier",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
    [
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
    ],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, os.path.join(here, "classifier.onnx"))

image = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
np.savez(os.path.join(here, "classifier_inputs.npz"), image=image)
sess = ort.InferenceSession(os.path.join(here, "classifier.onnx"), providers=["CPUExecutionProvider"])
probs, label = sess.run(None, {"image": image})
np.savez(os.path.join(here, "classifier_expected.npz"), probs=probs, label=label)
print("wrote classifier.onnx, classifier_inputs.npz, classifier_expected.npz")
