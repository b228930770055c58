#!/usr/bin/env python3
"""Writes recurrent-layer models with inputs for benches/vs_ort.py: `DIR/gru` (a bidirectional
GRU with the reset gate after the product, as PyTorch exports it), `DIR/gru0` (the same with
ONNX's default, the reset gate before the product) and `DIR/rnn` (a simple tanh RNN), each over
64 steps of one row, 64 inputs and 128 hidden units, with random weights (seed 0). Usage:
`benches/recurrent.py DIR`, then `benches/vs_ort.py DIR --threads 1,2`."""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ, BATCH, INPUT, HIDDEN = 64, 1, 64, 128


def write(out, name, op, gates, dirs, **attrs):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((dirs, gates * HIDDEN, INPUT)) * 0.1).astype(np.float32)
    r = (rng.standard_normal((dirs, gates * HIDDEN, HIDDEN)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((dirs, 2 * gates * HIDDEN)) * 0.1).astype(np.float32)
    direction = "bidirectional" if dirs == 2 else "forward"
    node = helper.make_node(
        op, ["x", "W", "R", "B"], ["y", "yh"], hidden_size=HIDDEN, direction=direction, **attrs
    )
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INPUT])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("yh", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
         numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    x = rng.standard_normal((SEQ, BATCH, INPUT)).astype(np.float32)
    np.savez(os.path.join(d, "inputs.npz"), x=x)
    print(f"wrote {d}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    write(out, "gru", "GRU", 3, 2, linear_before_reset=1)
    write(out, "gru0", "GRU", 3, 2)
    write(out, "rnn", "RNN", 1, 1)


if __name__ == "__main__":
    main()
