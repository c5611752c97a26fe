"""Deployable files of a trained CGNet: the BatchNorm-folded network as ONNX or TorchScript, with
dynamic batch, height and width, and the metadata that says how to use it.

An ONNX file carries model-level ``metadata_props`` and a ``doc_string``, a TorchScript file an extra
file ``cgnet.json`` with the same key/value strings (input format, mean/std, class names, model
settings, source, producer), so a user pipeline needs neither this package nor its configs.
:func:`check_export` runs a written file and compares it with PyTorch.
"""

from __future__ import annotations

import inspect
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cgnet.inference import fold_network
from cgnet.models import CGNet
from cgnet.normalization import OFFICIAL_MEAN, OFFICIAL_STD, NormalizedNetwork

ExportFormat = Literal["onnx", "torchscript"]
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
METADATA_FILE = "cgnet.json"  # TorchScript extra file holding the metadata
UINT8_INPUT = "uint8 RGB [B,3,H,W], 0..255; the network normalises (x - mean) / std itself"
FLOAT_INPUT = "float32 RGB [B,3,H,W], normalised: (x - mean) / std with x in 0..255"


def deployable(
    model: CGNet,
    *,
    include_normalization: bool = False,
    mean: Sequence[float] = OFFICIAL_MEAN,
    std: Sequence[float] = OFFICIAL_STD,
) -> nn.Module:
    """The BN-folded network in eval mode on the CPU, optionally behind the project's normalisation."""
    net: nn.Module = fold_network(model.cpu().eval())
    if include_normalization:
        net = NormalizedNetwork(net, mean, std)
    return net.eval()


def example_input(
    size: Sequence[int], *, uint8: bool, batch: int = 1, seed: int = 0, scale: float = 50.0
) -> Tensor:
    """A reproducible input: raw 0..255 RGB for a normalising file, else ``scale`` times a standard
    normal (50 is about the spread of RGB minus the mean, what the official weights see)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, int(size[0]), int(size[1]))
    if uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.randn(shape, generator=gen) * scale


def producer_version() -> str:
    """This package's installed version, so a file says which code wrote it."""
    try:
        return package_metadata.version("cgnet")
    except package_metadata.PackageNotFoundError:  # run from a source tree without install
        return "unknown"


def model_settings(given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every CGNet setting (M, N, switches): its defaults overlaid with ``given``, so the file states
    the whole architecture, not only what a config happened to override."""
    params = inspect.signature(CGNet.__init__).parameters
    settings = {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "num_classes") and p.default is not inspect.Parameter.empty
    }
    settings.update(given or {})
    return json.loads(json.dumps(settings))  # tuples -> lists: what a reader gets back


def file_metadata(
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    include_normalization: bool,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    model: Mapping[str, Any] | None = None,
    source: str | Path | None = None,
) -> dict[str, str]:
    """What a user of the file needs, as string key/values (ONNX ``metadata_props`` hold strings;
    lists and dicts are JSON). Class names default to ``class_0..`` when the weights carry none."""
    names = list(class_names) if class_names else [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    meta = {
        "input_format": UINT8_INPUT if include_normalization else FLOAT_INPUT,
        "normalization_included": json.dumps(bool(include_normalization)),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "output_format": "float32 logits [B,classes,H,W]; argmax over axis 1 is the class index",
        "num_classes": str(int(num_classes)),
        "class_names": json.dumps(names),
        "model": json.dumps(model_settings(model)),
        "producer": f"cgnet {producer_version()}",
    }
    if ignore_index is not None:
        meta["ignore_index"] = str(int(ignore_index))
    if source is not None:
        meta["source"] = Path(source).name  # the name only: absolute paths leak the machine
    return meta


def describe(meta: Mapping[str, str]) -> str:
    """The metadata in one sentence, for the ONNX ``doc_string`` that viewers (Netron) show."""
    model = json.loads(meta["model"])
    origin = f" from {meta['source']}" if "source" in meta else ""
    return (
        f"CGNet (M={model.get('M')}, N={model.get('N')}) semantic segmentation into "
        f"{meta['num_classes']} classes (names in metadata class_names); input {INPUT_NAME!r}: "
        f"{meta['input_format']}, mean {meta['mean']}, std {meta['std']}; output {OUTPUT_NAME!r}: "
        f"{meta['output_format']}; written by {meta['producer']}{origin}."
    )


def export_onnx(
    net: nn.Module,
    path: str | Path,
    *,
    opset: int = 17,
    uint8: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``net`` as ONNX with named dynamic axes (``batch``, ``height``, ``width``; the output's
    axis 1 is ``classes``) and, if given, ``metadata`` as model-level ``metadata_props`` plus a
    one-sentence ``doc_string``.

    Uses the TorchScript-based exporter: the torch.export-based one needs onnxscript, which is not a
    dependency, and this network has no control flow that would need it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            net,
            (example_input((64, 96), uint8=uint8),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            # the class axis is static, but unnamed it would read "Resizelogits_dim_1"
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: {**dims, 1: "classes"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, dict(metadata))
        proto.doc_string = describe(metadata)
        onnx.save(proto, str(path))
    return path


def export_torchscript(
    net: nn.Module,
    path: str | Path,
    *,
    uint8: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``net`` traced to TorchScript; shapes are traced as ops, so any size runs. ``metadata``
    goes into the extra file ``cgnet.json``: read it with
    ``torch.jit.load(path, _extra_files={"cgnet.json": ""})``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(net, (example_input((64, 96), uint8=uint8),), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    extra = {METADATA_FILE: json.dumps(dict(metadata), indent=2)} if metadata else {}
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files=extra)
    path.write_bytes(buffer.getvalue())
    return path


def read_metadata(path: str | Path, format: ExportFormat) -> dict[str, str]:
    """The key/value strings an exported file carries (empty if it has none)."""
    if format == "onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {prop.key: prop.value for prop in proto.metadata_props}
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return dict(json.loads(extra[METADATA_FILE])) if extra[METADATA_FILE] else {}


def run_exported(path: str | Path, format: ExportFormat, images: Tensor) -> Tensor:
    """Logits from an exported file, for checks and for users without this package's model code."""
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module(images)


def check_export(
    path: str | Path,
    format: ExportFormat,
    reference: nn.Module,
    sizes: Sequence[Sequence[int]],
    *,
    uint8: bool = False,
    batch: int = 2,
    scale: float = 50.0,
) -> list[dict[str, Any]]:
    """Max logit difference and argmax agreement of the file against ``reference`` per size."""
    rows = []
    for k, size in enumerate(sizes):
        images = example_input(size, uint8=uint8, batch=batch, seed=k + 1, scale=scale)
        with torch.no_grad():
            expected = reference(images)
        got = run_exported(path, format, images)
        if got.shape != expected.shape:
            raise RuntimeError(f"{path}: output {tuple(got.shape)} != {tuple(expected.shape)}")
        rows.append(
            {
                "size": [int(v) for v in size],
                "max_abs_diff": float((got - expected).abs().max()),
                "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
            }
        )
    return rows
