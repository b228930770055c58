#!/usr/bin/env python3
"""Single-product models for the 4-bit matrix-vector target, to run through vs_ort.py.

    python3 benches/nbits_models.py OUT [--n 4096] [--k 4096] [--block 32] [--rows 1] [--bits 4]
    python3 benches/vs_ort.py OUT --threads 1,2 --rounds 3

Writes OUT/<name>/{model.onnx,inputs.npz}: `int<bits>_matvec` (com.microsoft MatMulNBits,
`--bits`-bit weights (2, 4 or 8) in blocks of `--block`, zero points packed, accuracy_level 0:
f32 activations) and `f32_matvec` (the same product as a plain MatMul on the dequantized f32
weight), A of `--rows` rows. Needs numpy and onnx.
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
    ap.add_argument("--bits", type=int, default=4, choices=[2, 4, 8])
    a = ap.parse_args()
    n, k, bs, bits = a.n, a.k, a.block, a.bits
    nb = (k + bs - 1) // bs
    per = 8 // bits
    rng = np.random.default_rng(0)

    def pack(v):
        # Values of `bits` bits, low ones first in each byte, rows padded to whole bytes.
        v = np.pad(v, ((0, 0), (0, -v.shape[1] % per)))
        return sum(v[:, i::per].astype(np.uint16) << (i * bits) for i in range(per)).astype(np.uint8)

    q = rng.integers(0, 1 << bits, (n, nb * bs), dtype=np.uint8)
    packed = pack(q).reshape(n, nb, bs // per)
    scales = rng.uniform(0.001, 0.02, (n, nb)).astype(np.float32)
    zq = rng.integers(0, 1 << bits, (n, nb), dtype=np.uint8)
    zeros = pack(zq)
    x = rng.standard_normal((a.rows, k)).astype(np.float32)
    inp = helper.make_tensor_value_info("a", TensorProto.FLOAT, [a.rows, k])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [a.rows, n])
    node = helper.make_node("MatMulNBits", ["a", "w", "s", "z"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=bs, accuracy_level=0)
    inits = [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s"),
             numpy_helper.from_array(zeros, "z")]
    name = f"int{bits}_matvec"
    save(a.out, name, helper.make_graph([node], name, [inp], [out], inits), x)
    zf = zq[:, :nb].astype(np.float32)
    w = ((q[:, :k].astype(np.float32) - np.repeat(zf, bs, axis=1)[:, :k])
         * np.repeat(scales, bs, axis=1)[:, :k]).T.copy()
    node = helper.make_node("MatMul", ["a", "w"], ["y"])
    g = helper.make_graph([node], "f32", [inp], [out], [numpy_helper.from_array(w, "w")])
    save(a.out, "f32_matvec", g, x)


if __name__ == "__main__":
    main()
