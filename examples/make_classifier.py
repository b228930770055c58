"""Builds examples/classifier.onnx, a small image classifier (conv, batch norm, ReLU, depthwise
conv, pooling, gemm, softmax) trained to tell ten kinds of 16x16 pictures apart, with its inputs
(one picture of each of four kinds) and onnxruntime's outputs.

The first convolution holds hand-made filters (colour, dark, edges in four directions, spots);
batch norm takes the statistics of the training pictures; the last layer is trained here by
softmax regression on the pooled features, in a second or two of numpy.

    python3 examples/make_classifier.py   # needs numpy, onnx, onnxruntime

Classes: 0 red, 1 green, 2 blue, 3 white, 4 black, 5 horizontal stripes, 6 vertical stripes,
7 diagonal stripes, 8 checkerboard, 9 spots.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)
CLASSES = ["red", "green", "blue", "white", "black", "horizontal", "vertical", "diagonal",
           "checkerboard", "spots"]
SIZE = 16


def picture(kind):
    """One noisy 16x16 RGB picture of a class, values around [-1, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(3.0, 5.0)
    gray = np.zeros((SIZE, SIZE), np.float32)
    img = np.zeros((3, SIZE, SIZE), np.float32)
    if kind < 3:
        img[kind] = rng.uniform(0.8, 1.2)
        img -= 0.3
    elif kind == 3:
        img += rng.uniform(0.7, 1.0)
    elif kind == 4:
        img -= rng.uniform(0.7, 1.0)
    else:
        if kind == 5:
            gray = np.sign(np.sin(2 * np.pi * y / period + phase))
        elif kind == 6:
            gray = np.sign(np.sin(2 * np.pi * x / period + phase))
        elif kind == 7:
            gray = np.sign(np.sin(2 * np.pi * (x + y) / (1.4 * period) + phase))
        elif kind == 8:
            cell = int(rng.integers(2, 4))
            gray = np.where(((x // cell) + (y // cell)) % 2 == 0, 1.0, -1.0)
        else:
            gray = -np.ones((SIZE, SIZE), np.float32)
            for _ in range(int(rng.integers(4, 8))):
                cy, cx = rng.integers(1, SIZE - 1, 2)
                gray[cy - 1:cy + 2, cx - 1:cx + 2] = 1.0
        img += gray * 0.8
    img += rng.normal(0, 0.25, img.shape).astype(np.float32)
    return img


def pictures(n):
    labels = np.arange(n) % len(CLASSES)
    return np.stack([picture(k) for k in labels]).astype(np.float32), labels


def filters():
    """16 hand-made 3x3 filters over RGB."""
    sobel = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32) / 4
    diag = np.array([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]], np.float32) / 4
    spot = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32) / 8
    gray = np.ones(3, np.float32) / 3
    w = []
    for c in range(3):  # colours: this channel over the others
        k = np.zeros((3, 3, 3), np.float32)
        k[:, 1, 1] = -0.5
        k[c, 1, 1] = 1.0
        w.append(k)
    for sign in (1, -1):  # bright, dark
        k = np.zeros((3, 3, 3), np.float32)
        k[:, 1, 1] = sign * gray
        w.append(k)
    for pattern in (sobel, sobel.T, diag, diag[:, ::-1], spot):
        for sign in (1, -1):  # both polarities survive the ReLU
            w.append(sign * gray[:, None, None] * pattern[None])
    w.append(np.full((3, 3, 3), 1 / 27, np.float32))  # overall brightness
    return np.stack(w)


CHANNELS = 16
conv_w = filters()
assert conv_w.shape == (CHANNELS, 3, 3, 3)


def build(bn_mean, bn_var, fc_w, fc_b, outputs):
    inits = [
        numpy_helper.from_array(conv_w, "conv1_w"),
        numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "conv1_b"),
        numpy_helper.from_array(np.ones(CHANNELS, np.float32), "bn_scale"),
        numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "bn_bias"),
        numpy_helper.from_array(bn_mean.astype(np.float32), "bn_mean"),
        numpy_helper.from_array(bn_var.astype(np.float32), "bn_var"),
        numpy_helper.from_array(np.full((CHANNELS, 1, 3, 3), 1 / 9, np.float32), "dw_w"),
        numpy_helper.from_array(fc_w.astype(np.float32), "fc_w"),
        numpy_helper.from_array(fc_b.astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw_w"], ["c2"], group=CHANNELS, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
    ]
    types = {
        "c1": (TensorProto.FLOAT, ["batch", CHANNELS, SIZE, SIZE]),
        "f": (TensorProto.FLOAT, ["batch", CHANNELS]),
        "probs": (TensorProto.FLOAT, ["batch", 10]),
        "label": (TensorProto.INT64, ["batch"]),
    }
    outs = [helper.make_tensor_value_info(o, *types[o]) for o in outputs]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model, images, output):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([output], {"image": images})[0]


train, train_labels = pictures(2000)
test, test_labels = pictures(500)
zeros_fc = (np.zeros((10, CHANNELS)), np.zeros(10))
# Batch norm from the training pictures' first-layer statistics.
c1 = run(build(np.zeros(CHANNELS), np.ones(CHANNELS), *zeros_fc, ["c1"]), train, "c1")
bn_mean, bn_var = c1.mean(axis=(0, 2, 3)), c1.var(axis=(0, 2, 3)) + 1e-3
feature_model = build(bn_mean, bn_var, *zeros_fc, ["f"])
features = run(feature_model, train, "f")
mu, sigma = features.mean(0), features.std(0) + 1e-6

# Softmax regression on standardized features; the standardization folds into the weights.
x = (features - mu) / sigma
w, b = np.zeros((10, CHANNELS)), np.zeros(10)
onehot = np.eye(10)[train_labels]
for step in range(3000):
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - onehot) / len(x)
    w -= 0.5 * (grad.T @ x + 1e-4 * w)
    b -= 0.5 * grad.sum(0)
fc_w = w / sigma
fc_b = b - fc_w @ mu

model = build(bn_mean, bn_var, fc_w, fc_b, ["probs", "label"])
accuracy = (run(model, test, "label") == test_labels).mean()
print(f"test accuracy {accuracy:.3f} on {len(test)} fresh pictures")
assert accuracy > 0.9, "the example classifier should learn its pictures"
onnx.save(model, os.path.join(here, "classifier.onnx"))

kinds = [0, 5, 8, 9]  # red, horizontal stripes, checkerboard, spots
image = np.stack([picture(k) for k in kinds]).astype(np.float32)
np.savez(os.path.join(here, "classifier_inputs.npz"), image=image)
probs, label = ort.InferenceSession(
    os.path.join(here, "classifier.onnx"), providers=["CPUExecutionProvider"]
).run(None, {"image": image})
np.savez(os.path.join(here, "classifier_expected.npz"), probs=probs, label=label)
print("labels of the example pictures:", [CLASSES[i] for i in label], "(drawn as", [CLASSES[k] for k in kinds], ")")
print("wrote classifier.onnx, classifier_inputs.npz, classifier_expected.npz")
