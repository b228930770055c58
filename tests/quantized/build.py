#!/usr/bin/env python3
"""Rebuilds kiln's quantized model suite: models of ../shared/models quantized by onnxruntime's
own tools, with inputs and onnxruntime's outputs (1 thread, graph optimizations off) as the
reference.

    python3 tests/quantized/build.py [--shared DIR] [--cache DIR] [--only NAME,...]

Needs numpy, onnx, onnxruntime and onnx-ir (pip). Forms, as users make them:
  - `dynamic`: `quantize_dynamic`, int8 weights (DynamicQuantizeLinear -> MatMulInteger /
    ConvInteger -> Cast -> Mul, the activations quantized at run time);
  - `qdq`: `quantize_static` in QDQ form, uint8 activations and int8 weights (per channel),
    calibrated on the model's own inputs;
  - `s8`: `quantize_static` in QDQ form with symmetric int8 activations and weights (the
    TensorRT-style form);
  - `q16`: `quantize_static` in QDQ form with uint16 activations, which onnxruntime writes
    with its own com.microsoft QuantizeLinear and DequantizeLinear;
  - `qop`: the same in QOperator form (QLinearConv, QLinearMatMul and com.microsoft's
    QGemm, QLinearAdd, QLinearMul, QLinearSigmoid, QLinearSoftmax, QLinearConcat,
    QLinearGlobalAveragePool), the form of the ONNX model zoo's int8 models;
  - `nbits32`, `nbits128`, `nbits64sym`: `MatMulNBitsQuantizer`, 4-bit weights in blocks of
    32, 128 or 64 (com.microsoft MatMulNBits, asymmetric: packed zero points; symmetric:
    none, and negative scales); `nbits32acc4`, `nbits128acc4` the same at
    `accuracy_level` 4 (int8 activations);
  - `int4qdq32`, `int4qdq128sym`: the same quantizer's QDQ form (opset 21 DequantizeLinear
    with `block_size` on uint4 weights and zero points, or symmetric int4 without them,
    before a MatMul), the model first converted to opset 21.
Each goes to the cache (default ~/.cache/kiln-quantized/models/SOURCE_FORM/, or
$KILN_QUANT_CACHE/models/...: model.onnx, inputs.npz, expected.npz, meta.json), not to the
repository (they derive from ../shared, which CI always has); tests/quantized/manifest.json
(committed) lists them with the tolerance tests/quantized.rs compares with, and reports each
absent one as SKIPPED.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent

# (source model, forms); MatMulNBits only quantizes MatMul nodes (not Gemm).
PLAN = [
    ("mlp", ["dynamic", "qdq", "qop", "q16", "s8"]),
    ("cnn_dsc", ["dynamic", "qdq", "qop", "q16"]),
    ("resnet_block", ["qdq", "qop", "s8"]),
    ("bert_tiny", ["dynamic", "qdq", "qop", "s8", "nbits32", "nbits32acc4", "int4qdq128sym"]),
    ("vit_tiny", ["dynamic", "qop", "nbits32", "nbits64sym"]),
    ("llama_tiny", ["dynamic", "qop", "nbits32", "nbits128", "nbits128acc4", "int4qdq32"]),
]


ort.set_default_logger_severity(3)


# Integer products of activations and weights: the input indices of the activations' zero
# point (None: quantized inside, uint8), the weight and the weight's zero point.
PRODUCTS = {
    "MatMulInteger": (2, 1, 3),
    "ConvInteger": (2, 1, 3),
    "QLinearMatMul": (2, 3, 5),
    "QLinearConv": (2, 3, 5),
    "QGemm": (2, 3, 5),
    "MatMulIntegerToFloat": (4, 1, 5),
    "DynamicQuantizeMatMul": (None, 1, 3),
}


def as_uint8(g: onnx.GraphProto, inits: dict, node: onnx.NodeProto, at: tuple, converted: set):
    """Input `at[0]` of `node`, an int8 initializer, stored as uint8 plus 128 (once, however
    many nodes read it: `converted`), and its zero point, input `at[1]` (absent: 0), read
    from a uint8 initializer plus 128 beside it: w + 128 - (z + 128) is w - z."""
    from onnx import numpy_helper

    wi, zi = at
    w = node.input[wi]
    z = node.input[zi] if len(node.input) > zi else ""
    if w not in converted:
        u = (numpy_helper.to_array(inits[w]).astype(np.int16) + 128).astype(np.uint8)
        inits[w].CopyFrom(numpy_helper.from_array(u, w))
        converted.add(w)
    zname = (z or w) + "_as_uint8"
    if zname not in inits:
        zs = numpy_helper.to_array(inits[z]) if z else np.zeros((), np.int8)
        t = numpy_helper.from_array((zs.astype(np.int16) + 128).astype(np.uint8), zname)
        g.initializer.append(t)
        inits[zname] = t
    while len(node.input) <= zi:
        node.input.append("")
    node.input[zi] = zname


def exact_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every int8 weight of a product of uint8 activations stored as uint8, and
    its zero point with it (w + 128 - (z + 128) is w - z): the products' definitions compute
    the same. onnxruntime's AVX2 kernel for uint8 x int8 sums pairs of byte products in
    saturating int16 (vpmaddubsw), so on CPUs without VNNI or AMX its results are not the
    ops' (bert_tiny_qop's outputs moved by 0.24); its uint8 x uint8 kernel widens to int16
    first and is exact everywhere."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    # Activations' types where no zero point says: DynamicQuantizeLinear makes uint8.
    uint8 = {n.output[0] for n in g.node if n.op_type == "DynamicQuantizeLinear"}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    converted = set()
    for n in g.node:
        if n.op_type not in PRODUCTS:
            continue
        azi, wi, zi = PRODUCTS[n.op_type]
        get = lambda i: n.input[i] if i is not None and len(n.input) > i else ""
        az, w, z = get(azi), get(wi), get(zi)
        if azi is None:
            act_u8 = True
        elif az in inits:
            act_u8 = inits[az].data_type == onnx.TensorProto.UINT8
        else:
            act_u8 = n.input[0] in uint8
        if not act_u8 or w not in inits or inits[w].data_type != onnx.TensorProto.INT8:
            continue
        if (z and z not in inits) or any(c not in PRODUCTS for c in consumers[w]):
            continue
        as_uint8(g, inits, n, (wi, zi), converted)
    return model


def reference(model: Path, inputs: dict) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = exact_weights(onnx.load(str(model)))
    s = ort.InferenceSession(exact.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, inputs)))


class Reader:
    """Calibration data: the model's own inputs, once."""

    def __init__(self, inputs):
        self.items = [inputs]

    def get_next(self):
        return self.items.pop() if self.items else None

    def rewind(self):
        pass


def quantize(src: Path, form: str, inputs: dict, dst: Path):
    from onnxruntime import quantization as q

    if form == "dynamic":
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8)
    elif form in ("qdq", "qop", "q16", "s8"):
        activations = {"q16": q.QuantType.QUInt16, "s8": q.QuantType.QInt8}
        extra = {
            "q16": {"UseQDQContribOps": True},
            "s8": {"ActivationSymmetric": True, "WeightSymmetric": True},
        }
        q.quantize_static(
            str(src),
            str(dst),
            Reader(inputs),
            quant_format=q.QuantFormat.QOperator if form == "qop" else q.QuantFormat.QDQ,
            activation_type=activations.get(form, q.QuantType.QUInt8),
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            extra_options=extra.get(form, {}),
        )
    elif form.startswith("nbits"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # `acc4`: accuracy_level 4, int8 activations (onnxruntime quantizes each block of
        # A's rows at run time).
        level = 4 if form.endswith("acc4") else None
        spec = form[len("nbits"):].removesuffix("acc4")
        sym = spec.endswith("sym")
        block = int(spec.removesuffix("sym"))
        m = onnx.load(str(src))
        quant = MatMulNBitsQuantizer(m, block_size=block, is_symmetric=sym, accuracy_level=level)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    elif form.startswith("int4qdq"):
        from onnx import version_converter
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        sym = form.endswith("sym")
        block = int(form[len("int4qdq"):].removesuffix("sym"))
        # The QDQ form needs opset 21 (int4 DequantizeLinear with block_size); the quantizer
        # only stamps the version, so the model's other ops are converted first.
        m = version_converter.convert_version(onnx.load(str(src)), 21)
        quant = MatMulNBitsQuantizer(
            m, block_size=block, is_symmetric=sym, quant_format=q.QuantFormat.QDQ
        )
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    else:
        raise ValueError(form)


def tolerance(src_meta: dict, expected: dict, form: str) -> dict:
    # Quantized activations round at boundaries that ulp-level differences in a scale move:
    # an output may then differ by a quantum's effect (llama_tiny's dynamic form: 4e-4 of
    # its logits' range). The suite's float tolerance, its absolute part widened to 2e-3 of
    # the outputs' range for the forms that quantize activations.
    tol = dict(src_meta.get("suggested_tol", {"rtol": 1e-3, "atol": 1e-4}))
    if form in ("dynamic", "qdq", "qop", "q16", "s8"):
        span = max(float(np.ptp(v)) for v in expected.values() if v.dtype.kind == "f")
        # onnxruntime computes QLinearSoftmax by a lookup table and integer sums, its own
        # approximation of the op (kiln computes the definition: dequantize, softmax,
        # quantize): outputs move by a few quanta (vit_tiny's logits by 4 of 0.0078).
        widen = 2e-2 if form == "qop" else 2e-3
        tol["atol"] = max(tol["atol"], widen * span)
    elif form.endswith("acc4"):
        # int8 rows: a block's quantum is 1/127 of its largest value, and the last-bit
        # differences of float work before a product move some values across a rounding
        # boundary (llama_tiny's logits by 1.1e-2 of a range of 4.9).
        span = max(float(np.ptp(v)) for v in expected.values() if v.dtype.kind == "f")
        tol["atol"] = max(tol["atol"], 5e-3 * span)
    return {k: float(f"{v:.3g}") for k, v in tol.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(HERE.parent.parent.parent / "shared" / "models"))
    default_cache = os.environ.get("KILN_QUANT_CACHE") or str(Path.home() / ".cache" / "kiln-quantized")
    ap.add_argument("--cache", default=default_cache)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    out = Path(a.cache) / "models"
    only = set(filter(None, a.only.split(",")))
    shared = Path(a.shared)
    if not shared.is_dir():
        # Without ../shared there is nothing to quantize: tests/quantized.rs then reports
        # every model SKIPPED.
        print(f"no shared models at {shared} (--shared DIR): nothing built", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, forms in PLAN:
        src = shared / name
        inputs = dict(np.load(src / "inputs.npz"))
        meta = json.loads((src / "meta.json").read_text())
        for form in forms:
            tag = f"{name}_{form}"
            if only and tag not in only and name not in only:
                continue
            d = out / tag
            with tempfile.TemporaryDirectory() as tmp:
                model = Path(tmp) / "model.onnx"
                quantize(src / "model.onnx", form, inputs, model)
                expected = reference(model, inputs)
                if d.exists():
                    shutil.rmtree(d)
                d.mkdir(parents=True)
                shutil.copy(model, d / "model.onnx")
            np.savez(d / "inputs.npz", **inputs)
            np.savez(d / "expected.npz", **expected)
            ops = sorted({n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node})
            info = {
                "source": name,
                "form": form,
                "tolerance": tolerance(meta, expected, form),
                "ops": ops,
                "onnx_bytes": os.path.getsize(d / "model.onnx"),
                "onnxruntime": ort.__version__,
            }
            (d / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
            manifest.append({"name": tag, **info["tolerance"]})
            print(f"{tag}: {info['onnx_bytes']} bytes, {', '.join(ops)}")
    if not only:
        (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
