#!/usr/bin/env python3
"""kiln against onnxruntime on the shared models, measured side by side in one run.

    python3 benches/vs_ort.py ../shared/models [--only mlp,lstm] [--threads 1,2] [--rounds 3]

For every model and thread count, alternates `ort_bench.py` (ORT_ENABLE_ALL, best of 3 rounds of
medians) with `kiln bench --json` (median over runs after warm-up), `--rounds` times each, and
keeps each side's best median, so that both see the same machine load. Prints a markdown table
(model, kiln ms, ORT ms, kiln/ORT) per thread count, and the geometric mean of the ratios over
the neural models. Needs numpy and onnxruntime in the Python that runs it, and a release build
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


def kiln_ms(kiln, models, name, t):
    d = os.path.join(models, name)
    out = subprocess.run([kiln, "bench", os.path.join(d, "model.onnx"), "--inputs",
                          os.path.join(d, "inputs.npz"), "--threads", str(t), "--runs", "30",
                          "--warmup", "5", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kiln", default=os.path.join(os.path.dirname(__file__), "..", "target",
                                                  "release", "kiln"))
    a = ap.parse_args()
    tool = os.path.join(a.models, "..", "tools", "ort_bench.py")
    names = sorted(n for n in os.listdir(a.models)
                   if os.path.isfile(os.path.join(a.models, n, "model.onnx")))
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    for t in [int(x) for x in a.threads.split(",")]:
        print(f"\n{t} thread(s)\n\n| model | kiln ms | ORT ms | kiln/ORT |\n|---|---:|---:|---:|")
        logs = []
        for name in names:
            k, o = math.inf, math.inf
            for _ in range(a.rounds):
                o = min(o, ort_ms(tool, a.models, name, t))
                k = min(k, kiln_ms(a.kiln, a.models, name, t))
            r = k / o
            if name in NEURAL:
                logs.append(math.log(r))
            print(f"| {name} | {k:.3f} | {o:.3f} | {r:.2f} |", flush=True)
        if logs:
            print(f"\ngeomean kiln/ORT over {len(logs)} neural models: "
                  f"{math.exp(sum(logs) / len(logs)):.2f}")


if __name__ == "__main__":
    main()
