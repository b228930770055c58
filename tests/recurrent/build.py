#!/usr/bin/env python3
"""Rebuilds the recurrent-layer fixtures `tests/recurrent.rs` checks: small LSTM, GRU and RNN
nodes in the variants the ONNX spec allows (directions, sequence lengths, clip, batch-major
layout, linear_before_reset, input_forget, peepholes, no bias or initial state, a sequence
long enough to run as a loop), each with inputs and the reference outputs — onnxruntime's,
or the ONNX reference implementation's where onnxruntime refuses the node (layout = 1).

    python3 tests/recurrent/build.py

Needs numpy, onnx and onnxruntime. Writes tests/recurrent/NAME.onnx, NAME.in.npz and
NAME.out.npz (a few KB each).
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx.reference import ReferenceEvaluator

HERE = Path(__file__).resolve().parent
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def case(rng, op, name, hid=5, inp=3, seq=4, batch=2, direction="forward", lens=False,
         clip=None, lbr=0, forget=0, peep=False, layout=0, bias=True, init=True):
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    w = (rng.standard_normal((nd, g * hid, inp)) * 0.5).astype(np.float32)
    r = (rng.standard_normal((nd, g * hid, hid)) * 0.5).astype(np.float32)
    b = (rng.standard_normal((nd, 2 * g * hid)) * 0.3).astype(np.float32)
    xs = (seq, batch, inp) if layout == 0 else (batch, seq, inp)
    feeds = {"x": rng.standard_normal(xs).astype(np.float32)}
    inits = [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(r, "R")]
    ins = ["x", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(onnx.numpy_helper.from_array(b, "B"))
    vinfo = [h.make_tensor_value_info("x", T.FLOAT, list(xs))]
    if lens:
        feeds["lens"] = np.array([seq, max(1, seq - 2)][:batch], dtype=np.int32)
        ins.append("lens")
        vinfo.append(h.make_tensor_value_info("lens", T.INT32, [batch]))
    else:
        ins.append("")
    hs = (nd, batch, hid) if layout == 0 else (batch, nd, hid)
    states = ["h0"] + (["c0"] if op == "LSTM" else [])
    for s in states:
        if init:
            feeds[s] = (rng.standard_normal(hs) * 0.3).astype(np.float32)
            ins.append(s)
            vinfo.append(h.make_tensor_value_info(s, T.FLOAT, list(hs)))
        else:
            ins.append("")
    if op == "LSTM" and peep:
        p = (rng.standard_normal((nd, 3 * hid)) * 0.3).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(p, "P"))
        ins.append("P")
    while ins[-1] == "":
        ins.pop()
    attrs = dict(hidden_size=hid, direction=direction, layout=layout)
    if clip is not None:
        attrs["clip"] = clip
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    if op == "LSTM" and forget:
        attrs["input_forget"] = 1
    outs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    node = h.make_node(op, ins, outs, **attrs)
    graph = h.make_graph([node], name, vinfo,
                         [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 14)])
    model.ir_version = 8
    path = HERE / f"{name}.onnx"
    onnx.save(model, path)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:
        ref = ReferenceEvaluator(model).run(None, feeds)
    np.savez(HERE / f"{name}.in.npz", **feeds)
    np.savez(HERE / f"{name}.out.npz", **dict(zip(outs, ref)))


def main():
    rng = np.random.default_rng(0)
    for op in GATES:
        for d in ["forward", "reverse", "bidirectional"]:
            case(rng, op, f"{op.lower()}_{d}", direction=d)
            case(rng, op, f"{op.lower()}_{d}_lens", direction=d, lens=True)
        case(rng, op, f"{op.lower()}_clip", clip=0.7)
        case(rng, op, f"{op.lower()}_layout1", layout=1, direction="bidirectional")
        case(rng, op, f"{op.lower()}_bare", bias=False, init=False)
        case(rng, op, f"{op.lower()}_long", seq=300, hid=3, inp=2, batch=1)
    case(rng, "GRU", "gru_linear_before_reset", lbr=1)
    case(rng, "GRU", "gru_linear_before_reset_bi_lens", lbr=1, direction="bidirectional", lens=True)
    case(rng, "LSTM", "lstm_input_forget", forget=1)
    case(rng, "LSTM", "lstm_peepholes", peep=True)
    case(rng, "LSTM", "lstm_peepholes_forget_bi", peep=True, forget=1, direction="bidirectional")


if __name__ == "__main__":
    main()
