#!/usr/bin/env python3
"""Writes a MobileNetV3-small-shaped ONNX model (random weights, batch norms folded into the
convs' biases as a PyTorch eval export has them) and its input, as DIR/mobilenet_v3/{model.onnx,
inputs.npz} for `benches/vs_ort.py DIR`:

    python3 benches/mobilenet_v3.py /tmp/synth && python3 benches/vs_ort.py /tmp/synth

Real networks' channel counts (16, 24, 40, 48, 72, 88, 96, 120, 144, 240, 288, 576: many not
multiples of 16), depthwise 3×3 and 5×5 convs, squeeze-excite blocks (global average pool, two
1×1 convs, ReLU, HardSigmoid, a product) and HardSwish — the forms the shared models and the
zoo's `light` models lack. Needs numpy and onnx.
"""
import os, sys

import numpy as np
import onnx
from onnx import TensorProto, helper as h, numpy_helper as nh

rng = np.random.default_rng(0)
nodes, inits, count = [], [], [0]


def name(prefix):
    count[0] += 1
    return f"{prefix}{count[0]}"


def const(a):
    n = name("w")
    inits.append(nh.from_array(a.astype(np.float32), n))
    return n


def act(x, kind):
    if kind is None:
        return x
    y = name("a")
    if kind == "relu":
        nodes.append(h.make_node("Relu", [x], [y]))
    elif kind == "hswish":
        nodes.append(h.make_node("HardSwish", [x], [y]))
    else:
        nodes.append(h.make_node("HardSigmoid", [x], [y], alpha=1 / 6, beta=0.5))
    return y


def conv(x, cin, cout, k, s=1, groups=1, kind=None):
    fan_in = cin // groups * k * k
    w = const(rng.standard_normal((cout, cin // groups, k, k)) * (2.0 / fan_in) ** 0.5)
    b = const(rng.standard_normal(cout) * 0.1)
    y = name("c")
    nodes.append(
        h.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[s, s],
                    pads=[k // 2] * 4, group=groups))
    return act(y, kind)


def squeeze_excite(x, c):
    p = name("p")
    nodes.append(h.make_node("GlobalAveragePool", [x], [p]))
    r = conv(p, c, max(8, c // 4), 1, kind="relu")
    e = conv(r, max(8, c // 4), c, 1, kind="hsigmoid")
    y = name("m")
    nodes.append(h.make_node("Mul", [x, e], [y]))
    return y


def block(x, cin, expand, cout, k, s, se, kind):
    y = x if expand == cin else conv(x, cin, expand, 1, kind=kind)
    y = conv(y, expand, expand, k, s, groups=expand, kind=kind)
    if se:
        y = squeeze_excite(y, expand)
    y = conv(y, expand, cout, 1)
    if s == 1 and cin == cout:
        z = name("r")
        nodes.append(h.make_node("Add", [x, y], [z]))
        y = z
    return y


def main(out):
    x = conv("input", 3, 16, 3, 2, kind="hswish")
    # (in, expanded, out, window, stride, squeeze-excite, activation): MobileNetV3-small.
    for cfg in [(16, 16, 16, 3, 2, 1, "relu"), (16, 72, 24, 3, 2, 0, "relu"),
                (24, 88, 24, 3, 1, 0, "relu"), (24, 96, 40, 5, 2, 1, "hswish"),
                (40, 240, 40, 5, 1, 1, "hswish"), (40, 240, 40, 5, 1, 1, "hswish"),
                (40, 120, 48, 5, 1, 1, "hswish"), (48, 144, 48, 5, 1, 1, "hswish"),
                (48, 288, 96, 5, 2, 1, "hswish"), (96, 576, 96, 5, 1, 1, "hswish"),
                (96, 576, 96, 5, 1, 1, "hswish")]:
        x = block(x, *cfg)
    x = conv(x, 96, 576, 1, kind="hswish")
    p, f = name("p"), name("f")
    nodes.append(h.make_node("GlobalAveragePool", [x], [p]))
    nodes.append(h.make_node("Flatten", [p], [f]))
    w, b = const(rng.standard_normal((1000, 576)) * 0.05), const(np.zeros(1000))
    nodes.append(h.make_node("Gemm", [f, w, b], ["logits"], transB=1))
    graph = h.make_graph(nodes, "mobilenet_v3",
                         [h.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                         [h.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    d = os.path.join(out, "mobilenet_v3")
    os.makedirs(d, exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.savez(os.path.join(d, "inputs.npz"), input=x)
    print(f"wrote {d}: {len(nodes)} nodes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
