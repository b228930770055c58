#!/usr/bin/env python3
"""Rebuilds kiln's real-model corpus: ONNX files that real projects ship, with inputs and
onnxruntime's outputs (1 thread, all graph optimizations off) as the reference.

    python3 tests/corpus/build.py [--only NAME,...] [--cache DIR] [--fetch-only]

--fetch-only fills the cache with the models the manifest lists as not committed (those
missing there), leaving the repository as it is: what CI runs.

Needs numpy, onnx and onnxruntime (pip). Sources:
  - the ONNX wheel's `light` model zoo (nine classic CNNs; inputs from a fixed seed);
  - models that PyPI packages ship inside their wheels (`pip download --no-deps`, then the
    .onnx is read from the wheel): magika, silero-vad, rapidocr-onnxruntime, ddddocr,
    chython-rxnmap.
A model of at most 2 MB is written with its inputs and references to tests/corpus/models/NAME/
(committed); a larger one to the cache (default ~/.cache/kiln-corpus/models/NAME/, or
$KILN_CORPUS_CACHE), which `tests/corpus.rs` reads and reports as SKIPPED when absent.
tests/corpus/manifest.json lists every model either way.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
COMMIT_LIMIT = 2 << 20


def cache_dir(arg):
    if arg:
        return Path(arg)
    env = os.environ.get("KILN_CORPUS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kiln-corpus"


def uniform(shape, dtype=np.float32, lo=0.0, hi=1.0):
    return lambda rng: rng.uniform(lo, hi, shape).astype(dtype)


def normal(shape, dtype=np.float32, scale=1.0):
    return lambda rng: (rng.standard_normal(shape) * scale).astype(dtype)


def ints(shape, lo, hi, dtype=np.int64):
    return lambda rng: rng.integers(lo, hi, shape).astype(dtype)


def const(value):
    return lambda rng: np.asarray(value)


def zeros(shape, dtype=np.float32):
    return lambda rng: np.zeros(shape, dtype)


# name: (source, member of the source, {input: generator}, rtol, atol). Sources are
# ("wheel", PACKAGE) or ("onnx-light", None). Symbolic dims get sizes a user would send.
MODELS = {
    # PyPI wheels: real exporters (tf2onnx, paddle2onnx, torch, spox, onnx.quantize).
    "magika": (
        ("wheel", "magika"),
        "magika/models/standard_v3_3/model.onnx",
        {"bytes": ints((2, 2048), 0, 257, np.int32)},
        1e-4,
        1e-5,
    ),
    "silero_vad": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad.onnx",
        {
            "input": normal((1, 512), scale=0.1),
            "state": normal((2, 1, 128), scale=0.1),
            "sr": const(np.int64(16000)),
        },
        1e-3,
        1e-5,
    ),
    "silero_vad_16k_op15": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad_16k_op15.onnx",
        {
            "input": normal((2, 512), scale=0.1),
            "state": normal((2, 2, 128), scale=0.1),
            "sr": const(np.int64(16000)),
        },
        1e-3,
        1e-5,
    ),
    "silero_vad_16k_sequence": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        {
            "input": normal((3, 576), scale=0.1),
            "h": normal((1, 1, 128), scale=0.1),
            "c": normal((1, 1, 128), scale=0.1),
        },
        1e-3,
        1e-5,
    ),
    "silero_vad_half": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad_half.onnx",
        {"input": normal((1, 512), scale=0.1), "state": normal((2, 1, 128), scale=0.1)},
        1e-2,
        1e-3,
    ),
    "silero_vad_op18_ifless": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad_op18_ifless.onnx",
        {
            "input": normal((1, 512), scale=0.1),
            "sr": const(np.int64(16000)),
            "state": normal((2, 1, 128), scale=0.1),
        },
        1e-3,
        1e-5,
    ),
    "silero_vad_openvino_16k": (
        ("wheel", "silero-vad"),
        "silero_vad/data/silero_vad_openvino_16k.onnx",
        {"input": normal((1, 576), scale=0.1), "state": normal((2, 1, 128), scale=0.1)},
        1e-3,
        1e-5,
    ),
    "ppocr_v4_det": (
        ("wheel", "rapidocr-onnxruntime"),
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        {"x": uniform((1, 3, 96, 128), lo=-1.0)},
        1e-3,
        1e-4,
    ),
    "ppocr_v4_rec": (
        ("wheel", "rapidocr-onnxruntime"),
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        {"x": uniform((1, 3, 48, 160), lo=-1.0)},
        1e-3,
        1e-4,
    ),
    "ppocr_mobile_v2_cls": (
        ("wheel", "rapidocr-onnxruntime"),
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        {"x": uniform((2, 3, 48, 192), lo=-1.0)},
        1e-3,
        1e-4,
    ),
    "ddddocr_common": (
        ("wheel", "ddddocr"),
        "ddddocr/common.onnx",
        {"input1": uniform((1, 1, 64, 128))},
        1e-3,
        1e-3,
    ),
    "ddddocr_common_old": (
        ("wheel", "ddddocr"),
        "ddddocr/common_old.onnx",
        {"input1": uniform((1, 1, 64, 128))},
        1e-3,
        1e-3,
    ),
    "ddddocr_det": (
        ("wheel", "ddddocr"),
        "ddddocr/common_det.onnx",
        {"images": uniform((1, 3, 416, 416), hi=255.0)},
        1e-3,
        1e-3,
    ),
    "rxnmap": (
        ("wheel", "chython-rxnmap"),
        "chython_rxnmap/rxnmap.onnx",
        {
            "atoms": ints((1, 12), 2, 40),
            "neighbors": ints((1, 12), 0, 5),
            "distances": ints((1, 12, 12), 0, 10),
            "roles": ints((1, 12), 1, 3),
        },
        1e-3,
        1e-4,
    ),
}

LIGHT = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]
for _name in LIGHT:
    MODELS["light_" + _name] = (("onnx-light", None), _name, None, 1e-3, 1e-5)


def wheel_member(package, member, cache):
    """The bytes of `member` in the newest wheel of `package` (downloaded once)."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(norm + "-")]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", str(wheels)],
            check=True,
        )
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(norm + "-")]
    with zipfile.ZipFile(sorted(found)[-1]) as z:
        return z.read(member), sorted(found)[-1].name


def light_model(name):
    path = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"
    return path.read_bytes(), f"onnx {onnx.__version__} wheel, backend/test/data/light"


def generic_inputs(model, rng):
    """Inputs for a model whose dims are all given: floats uniform in [0, 1)."""
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.uniform(0, 1, shape).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(shape, dtype)
    return feeds


def reference(model_bytes, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def build(name, cache):
    (kind, package), member, gens, rtol, atol = MODELS[name]
    if kind == "wheel":
        data, origin = wheel_member(package, member, cache)
        origin = f"PyPI wheel {origin}: {member}"
    else:
        data, origin = light_model(member)
    model = onnx.load_from_string(data)
    rng = np.random.default_rng(0)
    feeds = (
        {k: g(rng) for k, g in gens.items()} if gens is not None else generic_inputs(model, rng)
    )
    expected = reference(data, feeds)
    committed = len(data) <= COMMIT_LIMIT
    out = (HERE / "models" / name) if committed else (cache / "models" / name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    (out / "inputs.npz").write_bytes(npz_bytes(feeds))
    (out / "expected.npz").write_bytes(npz_bytes(expected))
    return {
        "name": name,
        "source": origin,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "bytes": len(data),
        "committed": committed,
        "rtol": rtol,
        "atol": atol,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--cache", help="where large models and wheels go")
    ap.add_argument("--fetch-only", action="store_true", help="only fill the cache")
    a = ap.parse_args()
    cache = cache_dir(a.cache)
    names = a.only.split(",") if a.only else list(MODELS)
    manifest_path = HERE / "manifest.json"
    manifest = {}
    if manifest_path.exists():
        manifest = {m["name"]: m for m in json.loads(manifest_path.read_text())}
    if a.fetch_only:
        for name in names:
            m = manifest.get(name)
            if m and not m["committed"] and not (cache / "models" / name / "expected.npz").exists():
                build(name, cache)
                print(f"{name}: fetched into {cache}")
        return
    for name in names:
        if name not in MODELS:
            sys.exit(f"unknown model {name}; known: {', '.join(MODELS)}")
        entry = build(name, cache)
        manifest[name] = entry
        where = "committed" if entry["committed"] else f"cached in {cache}"
        print(f"{name}: {entry['bytes']} bytes, {where}")
    ordered = [manifest[n] for n in MODELS if n in manifest]
    manifest_path.write_text(json.dumps(ordered, indent=1) + "\n")


if __name__ == "__main__":
    main()
