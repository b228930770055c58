#!/usr/bin/env python3
"""Rebuilds kiln's real-model corpus: ONNX files that real projects ship, with inputs and
onnxruntime's outputs (1 thread, all graph optimizations off) as the reference.

    python3 tests/corpus/build.py [--only NAME,...] [--cache DIR] [--fetch-only]

--fetch-only fills the cache with the models the manifest lists as not committed (those
missing there), leaving the repository as it is: what CI runs.

Needs numpy, onnx and onnxruntime (pip); the exported models also torch, torchvision and
transformers. Sources:
  - the ONNX wheel's `light` model zoo (nine classic CNNs; inputs from a fixed seed);
  - torchvision and transformers architectures exported by torch.onnx.export with dynamic axes
    (MobileNetV3 with HardSwish, twice: the TorchScript exporter and the dynamo one with external
    data; an LR-ASPP segmentation net with bilinear upsampling; a CRNN text recognizer with a
    bidirectional LSTM over a symbolic width; a GPT-2 decoder step with past keys and values;
    a Whisper encoder);
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
    # Quantized by onnx.quantize into com.microsoft::DynamicQuantizeLSTM: onnxruntime also
    # quantizes the LSTM's activations at every step, kiln computes them in float, so the logits
    # (range about -3..15) differ by up to ~0.14; the decoded text (argmax) is the same.
    "ddddocr_common_old": (
        ("wheel", "ddddocr"),
        "ddddocr/common_old.onnx",
        {"input1": uniform((1, 1, 64, 128))},
        2e-2,
        0.2,
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


# Architectures exported by torch.onnx.export with dynamic axes (random weights, small widths
# so the files stay committable): name -> (function making (module, example args, export
# keywords), {input: generator}, rtol, atol). Needs torch, torchvision and transformers.
def _mobilenet_v3():
    import torch
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    cfg, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    m = MobileNetV3(cfg, last, num_classes=10)
    dyn = {"x": {0: "batch", 2: "height", 3: "width"}}
    return m, (torch.randn(1, 3, 96, 96),), dict(input_names=["x"], dynamic_axes=dyn)


def _mobilenet_v3_dynamo():
    import torch
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    cfg, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    m = MobileNetV3(cfg, last, num_classes=10)
    dim = torch.export.Dim
    shapes = {"x": {0: dim("batch"), 2: dim("h", min=32, max=1024), 3: dim("w", min=32, max=1024)}}
    return m, (torch.randn(1, 3, 96, 96),), dict(input_names=["x"], dynamic_shapes=shapes, dynamo=True)


def _lraspp():
    import torch
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

    backbone = mobilenet_v3_large(weights=None, width_mult=0.25, dilated=True)
    m = _lraspp_mobilenetv3(backbone, num_classes=4)

    class Out(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)["out"]

    dyn = {"image": {0: "batch", 2: "height", 3: "width"}}
    return Out(m), (torch.randn(1, 3, 64, 64),), dict(input_names=["image"], dynamic_axes=dyn)


def _crnn():
    import torch
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self, classes=37, hidden=32):
            super().__init__()

            def block(i, o, pool):
                return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(pool)]

            self.cnn = nn.Sequential(
                *block(1, 16, (2, 2)), *block(16, 32, (2, 2)), *block(32, 48, (2, 1)), *block(48, 64, (4, 1))
            )
            self.rnn = nn.LSTM(64, hidden, bidirectional=True, batch_first=False)
            self.fc = nn.Linear(2 * hidden, classes)

        def forward(self, x):
            f = self.cnn(x)  # [N, 64, 1, W/4]
            f = f.squeeze(2).permute(2, 0, 1)  # [T, N, 64]
            y, _ = self.rnn(f)
            return self.fc(y).log_softmax(-1)

    dyn = {"image": {0: "batch", 3: "width"}}
    return CRNN(), (torch.randn(1, 1, 32, 100),), dict(input_names=["image"], dynamic_axes=dyn)


def _gpt2_past():
    import torch
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    gpt = GPT2LMHeadModel(cfg)

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, k0, v0, k1, v1):
            cache = DynamicCache()
            cache.update(k0, v0, 0)
            cache.update(k1, v1, 1)
            out = self.m(input_ids=input_ids, past_key_values=cache, use_cache=True)
            layers = out.past_key_values.layers
            return (out.logits, layers[0].keys, layers[0].values, layers[1].keys, layers[1].values)

    names = ["input_ids", "past_k0", "past_v0", "past_k1", "past_v1"]
    dyn = {"input_ids": {0: "batch", 1: "seq"}}
    for n in names[1:]:
        dyn[n] = {0: "batch", 2: "past"}
    args = (torch.randint(0, 101, (1, 3)), *[torch.randn(1, 2, 5, 16) for _ in range(4)])
    outs = ["logits", "present_k0", "present_v0", "present_k1", "present_v1"]
    return Step(gpt), args, dict(input_names=names, output_names=outs, dynamic_axes=dyn)


def _whisper_encoder():
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    wc = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                       encoder_ffn_dim=64, max_source_positions=32, decoder_layers=1,
                       decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=100,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0, decoder_start_token_id=0)

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, feats):
            return self.m(feats).last_hidden_state

    dyn = {"input_features": {0: "batch"}}
    return Enc(WhisperEncoder(wc)), (torch.randn(1, 16, 64),), dict(input_names=["input_features"], dynamic_axes=dyn)


def _ssd_detector():
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    # SSDlite (MobileNetV3 backbone at a tenth of its width, 3 classes): the image is resized to
    # 320x320 inside, and the post-processing (per-class score filtering, top-k, batched
    # non-maximum suppression) gives a data-dependent number of detections.
    m = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3,
                                      width_mult=0.1, score_thresh=0.3, detections_per_img=20)

    # SSDlite's own initialization (normal, std 0.03) makes untrained features vanish and
    # every anchor score alike (ties everywhere); Kaiming's keeps them apart.
    with torch.no_grad():
        for c in m.modules():
            if isinstance(c, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(c.weight, mode="fan_in", nonlinearity="relu")
                if c.bias is not None:
                    c.bias.normal_(0.0, 0.1)

    class Detect(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            d = self.m([image])[0]
            return d["boxes"], d["scores"], d["labels"]

    dyn = {"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}}
    return Detect(m), (torch.rand(3, 240, 320),), dict(
        input_names=["image"], output_names=["boxes", "scores", "labels"], dynamic_axes=dyn,
        opset_version=17)


TORCH = {
    "torch_ssdlite_detector": (_ssd_detector, {"image": uniform((3, 200, 260))}, 1e-3, 1e-4),
    "torch_mobilenet_v3_small": (_mobilenet_v3, {"x": normal((2, 3, 96, 128))}, 1e-3, 1e-4),
    "torch_mobilenet_v3_dynamo": (_mobilenet_v3_dynamo, {"x": normal((1, 3, 64, 80))}, 1e-3, 1e-4),
    "torch_lraspp_segmentation": (_lraspp, {"image": normal((1, 3, 72, 96))}, 1e-3, 1e-4),
    "torch_crnn_lstm": (_crnn, {"image": normal((2, 1, 32, 160))}, 1e-3, 1e-4),
    "torch_gpt2_past": (
        _gpt2_past,
        {
            "input_ids": ints((1, 4), 0, 101),
            "past_k0": normal((1, 2, 7, 16)),
            "past_v0": normal((1, 2, 7, 16)),
            "past_k1": normal((1, 2, 7, 16)),
            "past_v1": normal((1, 2, 7, 16)),
        },
        1e-3,
        1e-4,
    ),
    "torch_whisper_encoder": (_whisper_encoder, {"input_features": normal((2, 16, 64))}, 1e-3, 1e-4),
}
for _name, (_f, _gens, _rtol, _atol) in TORCH.items():
    MODELS[_name] = (("torch", _f), _name, _gens, _rtol, _atol)


def torch_model(make, tmp):
    """Exports a module; returns the model's bytes and the external data files beside it."""
    import torch

    torch.manual_seed(0)
    module, args, kw = make()
    module.eval()
    path = Path(tmp) / "model.onnx"
    kw = dict(kw)
    kw.setdefault("dynamo", False)
    kw.setdefault("opset_version", 18)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), **kw)
    model = onnx.load(str(path))
    # External data (the dynamo exporter writes it) is kept as a file beside the model.
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    out = Path(tmp) / "final"
    out.mkdir()
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=external, location="model.onnx.data")
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "model.onnx"}
    return (out / "model.onnx").read_bytes(), files, f"torch {torch.__version__} torch.onnx.export"


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
    files = {}
    if kind == "wheel":
        data, origin = wheel_member(package, member, cache)
        origin = f"PyPI wheel {origin}: {member}"
    elif kind == "torch":
        with tempfile.TemporaryDirectory() as tmp:
            data, files, origin = torch_model(package, tmp)
    else:
        data, origin = light_model(member)
    model = onnx.load_from_string(data)
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            for fname, b in {"model.onnx": data, **files}.items():
                (Path(tmp) / fname).write_bytes(b)
            model = onnx.load(str(Path(tmp) / "model.onnx"))
            data_for_ort = model.SerializeToString()
    else:
        data_for_ort = data
    rng = np.random.default_rng(0)
    feeds = (
        {k: g(rng) for k, g in gens.items()} if gens is not None else generic_inputs(model, rng)
    )
    expected = reference(data_for_ort, feeds)
    size = len(data) + sum(len(b) for b in files.values())
    committed = size <= COMMIT_LIMIT
    out = (HERE / "models" / name) if committed else (cache / "models" / name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    for fname, b in files.items():
        (out / fname).write_bytes(b)
    (out / "inputs.npz").write_bytes(npz_bytes(feeds))
    (out / "expected.npz").write_bytes(npz_bytes(expected))
    return {
        "name": name,
        "source": origin,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "bytes": size,
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
        try:
            entry = build(name, cache)
        except ImportError as e:
            # The exported models need torch, torchvision and transformers; the committed
            # files stay as they are without them.
            print(f"SKIPPED {name}: {e} (pip install torch torchvision transformers)")
            continue
        manifest[name] = entry
        where = "committed" if entry["committed"] else f"cached in {cache}"
        print(f"{name}: {entry['bytes']} bytes, {where}")
    ordered = [manifest[n] for n in MODELS if n in manifest]
    manifest_path.write_text(json.dumps(ordered, indent=1) + "\n")


if __name__ == "__main__":
    main()
