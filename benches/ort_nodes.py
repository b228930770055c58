#!/usr/bin/env python3
"""onnxruntime's time per node of a model, to set beside `kiln bench --profile`.

    python3 benches/ort_nodes.py MODEL.onnx [--threads 1] [--runs 300] [--top 20]

Runs the model with random inputs (symbolic dims as 1) under ORT's profiler (ORT_ENABLE_ALL,
so nodes carry ORT's fused names, e.g. `..._nchwc` for its channel-blocked convs) and prints
each node's median kernel time over the runs, slowest first, and their total. The profile's
JSON goes to a temporary directory. Needs numpy and onnxruntime.
"""
import argparse, collections, json, os, tempfile

import numpy as np
import onnxruntime as ort

DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {}
        for i in s.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            dt = DTYPES.get(i.type, np.float32)
            feeds[i.name] = (rng.standard_normal(shape) if dt in (np.float32, np.float64)
                             else np.zeros(shape)).astype(dt)
        for _ in range(a.runs):
            s.run(None, feeds)
        with open(s.end_profiling()) as f:
            events = json.load(f)
    times = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[(e["name"][: -len("_kernel_time")], e["args"].get("op_name"))].append(e["dur"])
    rows = sorted(((float(np.median(v)), n, op) for (n, op), v in times.items()), reverse=True)
    for us, name, op in rows[: a.top]:
        print(f"{us:10.1f} us  {op:22s} {name}")
    print(f"total {sum(r[0] for r in rows):.1f} us over {len(rows)} nodes "
          f"({a.threads} thread(s), median of {a.runs} runs)")


if __name__ == "__main__":
    main()
