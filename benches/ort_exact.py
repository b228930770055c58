#!/usr/bin/env python3
"""onnxruntime's exact baseline for quantized models on CPUs without VNNI or AMX.

    python3 benches/ort_exact.py ~/.cache/kiln-quantized/models /tmp/exact
    python3 benches/vs_ort.py /tmp/exact --threads 1,2

Writes OUT/<name>/{model.onnx,inputs.npz} for every DIR/<name>: the model with the int8
weights of its uint8-activation products stored as uint8 plus 128, zero points too — the
weights of QLinearMatMul, QLinearConv, QGemm, MatMulInteger and the like, and int8 weights
read only by a DequantizeLinear before a MatMul, Conv or Gemm (QDQ). The ops compute the
same numbers; onnxruntime then runs its uint8 x uint8 kernels, which sum exactly, where its
AVX2 uint8 x int8 kernel sums pairs of byte products in saturating int16 (`vpmaddubsw`) and
is not the ops' result once weights pass half their range. kiln is exact on every CPU, so
this is the like-for-like onnxruntime time on such machines (see docs/decisions.md).
"""
import importlib.util
import os
import shutil
import sys

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "build", os.path.join(HERE, "..", "tests", "quantized", "build.py"))
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def dequantized_weights(m: onnx.ModelProto) -> None:
    """QDQ weights: int8 initializers read only by a DequantizeLinear before products."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    consumers, producer, converted = {}, {}, set()
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n

    def uint8_activation(product: onnx.NodeProto, weight: str) -> bool:
        # The product's other operand dequantized from uint8 (its zero point says).
        x = next((i for i in product.input[:2] if i != weight), "")
        dq = producer.get(x)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            return False
        z = inits.get(dq.input[2])
        return z is not None and z.data_type == onnx.TensorProto.UINT8

    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        w = inits[n.input[0]]
        if w.data_type != onnx.TensorProto.INT8 or len(consumers[w.name]) != 1:
            continue
        outs = consumers.get(n.output[0], [])
        if not outs or any(o.op_type not in ("MatMul", "Conv", "Gemm") for o in outs):
            continue
        if not all(uint8_activation(o, n.output[0]) for o in outs):
            continue
        z = n.input[2] if len(n.input) > 2 else ""
        if z and (z not in inits or len(consumers[z]) != 1):
            continue
        build.as_uint8(g, inits, n, (0, 2), converted)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    for name in sorted(os.listdir(src)):
        d = os.path.join(src, name)
        if not os.path.isfile(os.path.join(d, "model.onnx")):
            continue
        m = build.exact_weights(onnx.load(os.path.join(d, "model.onnx")))
        dequantized_weights(m)
        out = os.path.join(dst, name)
        os.makedirs(out, exist_ok=True)
        onnx.save(m, os.path.join(out, "model.onnx"))
        shutil.copy(os.path.join(d, "inputs.npz"), out)
        print(name)


if __name__ == "__main__":
    main()
