#!/usr/bin/env python3
"""Single-product models for the 4-bit matrix-vector target, to run through vs_ort.py.

    python3 benches/nbits_models.py OUT [--n 4096] [--k 4096] [--block 32] [--rows 1]
    python3 benches/vs_ort.py OUT --threads 1,2 --rounds 3

Writes OUT/<name>/{model.onnx,inputs.npz}: `int4_matvec` (com.microsoft MatMulNBits, 4-bit
weights in blocks of `--block`, zero points packed, accuracy_level 0: f32 activations) and
`f32_matvec` (the same product as a plain MatMul on the dequantized f32 weight), A of
`--rows` rows. Needs numpy and onnx.
"""
import argparse, os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(out, name, graph, a):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), os.path.join(d, "model.onnx"))
    np.savez(os.path.join(d, "inputs.npz"), a=a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--rows", type=int, default=1)
    a = ap.parse_args()
    n, k, bs = a.n, a.k, a.block
    nb = (k + bs - 1) // bs
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (n, nb * bs), dtype=np.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).reshape(n, nb, bs // 2)
    scales = rng.uniform(0.001, 0.02, (n, nb)).astype(np.float32)
    zq = rng.integers(0, 16, (n, nb + (nb % 2)), dtype=np.uint8)
    zeros = (zq[:, 0::2] | (zq[:, 1::2] << 4)).astype(np.uint8)
    x = rng.standard_normal((a.rows, k)).astype(np.float32)
    inp = helper.make_tensor_value_info("a", TensorProto.FLOAT, [a.rows, k])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [a.rows, n])
    node = helper.make_node("MatMulNBits", ["a", "w", "s", "z"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=bs, accuracy_level=0)
    inits = [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s"),
             numpy_helper.from_array(zeros, "z")]
    save(a.out, "int4_matvec", helper.make_graph([node], "int4", [inp], [out], inits), x)
    zf = zq[:, :nb].astype(np.float32)
    w = ((q[:, :k].astype(np.float32) - np.repeat(zf, bs, axis=1)[:, :k])
         * np.repeat(scales, bs, axis=1)[:, :k]).T.copy()
    node = helper.make_node("MatMul", ["a", "w"], ["y"])
    g = helper.make_graph([node], "f32", [inp], [out], [numpy_helper.from_array(w, "w")])
    save(a.out, "f32_matvec", g, x)


if __name__ == "__main__":
    main()
