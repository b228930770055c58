#!/usr/bin/env python3
"""kiln against onnxruntime on the shared models, measured side by side in one run.

    python3 benches/vs_ort.py ../shared/models [--only mlp,lstm] [--threads 1,2] [--rounds 3]
    python3 benches/vs_ort.py tests/corpus/models ~/.cache/kiln-corpus/models --threads 2

Any number of folders laid out as DIR/<name>/{model.onnx,inputs.npz} (the shared models, the
corpus); `--ort-tool` names ort_bench.py (default: ../shared/tools/ort_bench.py).

For every model and thread count, alternates `ort_bench.py` (ORT_ENABLE_ALL, best of 3 rounds of
medians) with `kiln bench --json` (median over runs after warm-up), `--rounds` times each, and
keeps each side's best median, so that both see the same machine load. Prints a markdown table
(model, kiln ms, ORT ms, kiln/ORT) per thread count, and the geometric mean of the ratios over
all models and over the neural ones. `--kiln` may be given several times (`--kiln before=PATH
--kiln after=PATH`): each round then runs every build in turn beside ORT, and the table has a
column pair per build — a before/after comparison measured under the same load. Needs numpy and onnxruntime in the Python that runs it, and a release build
of kiln (`cargo build --release`).
"""
import argparse, json, math, os, subprocess, sys

NEURAL = ["attention_long", "bert_tiny", "cnn_dsc", "llama_tiny", "lstm", "mlp", "moe_ffn",
          "resnet_block", "vae", "vae_decoder", "vit_tiny"]


def ort_ms(tool, models, name, t):
    out = subprocess.run([sys.executable, tool, models, "--only", name, "--threads", str(t),
                          "--budget", "0.5"], capture_output=True, text=True, check=True).stdout
    for tok in out.split():
        if tok.startswith(f"ort_{t}t_ms="):
            return float(tok.split("=")[1])
    raise RuntimeError(f"no ORT figure for {name}: {out}")


def kiln_bench(kiln, models, name, t):
    d = os.path.join(models, name)
    out = subprocess.run([kiln, "bench", os.path.join(d, "model.onnx"), "--inputs",
                          os.path.join(d, "inputs.npz"), "--threads", str(t), "--runs", "30",
                          "--warmup", "5", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kiln", action="append", default=[],
                    help="a kiln binary, or LABEL=PATH; repeat to compare builds")
    ap.add_argument("--ort-tool", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                     "shared", "tools", "ort_bench.py"))
    a = ap.parse_args()
    found = sorted((n, root) for root in a.models for n in os.listdir(root)
                   if os.path.isfile(os.path.join(root, n, "model.onnx")))
    if a.only:
        found = [(n, r) for n, r in found if n in a.only.split(",")]
    kilns = []
    for spec in a.kiln or [os.path.join(os.path.dirname(__file__), "..", "target", "release",
                                        "kiln")]:
        label, _, path = spec.rpartition("=") if "=" in spec else ("kiln", "", spec)
        kilns.append((label, path))
    heads = "".join(f" {l} ms | {l}/ORT |" for l, _ in kilns)
    for t in [int(x) for x in a.threads.split(",")]:
        print(f"\n{t} thread(s)\n\n| model | ORT ms |{heads} compile ms |"
              f"\n|---|---:|{'---:|---:|' * len(kilns)}---:|")
        logs = {l: ([], []) for l, _ in kilns}
        for name, root in found:
            k = {l: math.inf for l, _ in kilns}
            o, c, spec = math.inf, math.inf, False
            try:
                for _, path in kilns:
                    kiln_bench(path, root, name, t)
            except subprocess.CalledProcessError as e:
                why = (e.stderr or "").strip().splitlines()[-1:] or ["?"]
                print(f"| {name} | fails: {why[0][:80]} |", flush=True)
                continue
            for _ in range(a.rounds):
                o = min(o, ort_ms(a.ort_tool, root, name, t))
                for label, path in kilns:
                    b = kiln_bench(path, root, name, t)
                    k[label] = min(k[label], b["median_ms"])
                    c = min(c, b.get("compile_ms", math.inf))
                    spec = b.get("specialized", False)
            cells = ""
            for label, _ in kilns:
                r = k[label] / o
                logs[label][0].append(math.log(r))
                if name in NEURAL:
                    logs[label][1].append(math.log(r))
                cells += f" {k[label]:.3f} | {r:.2f} |"
            note = " (specialized)" if spec else ""
            print(f"| {name} | {o:.3f} |{cells} {c:.1f}{note} |", flush=True)
        for label, (every, neural) in logs.items():
            g = lambda xs: math.exp(sum(xs) / len(xs)) if xs else math.nan
            print(f"\ngeomean {label}/ORT: {g(every):.2f} over {len(every)} models, "
                  f"{g(neural):.2f} over {len(neural)} neural models")

if __name__ == "__main__":
    main()
