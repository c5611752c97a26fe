"""Load CGNet weights from every checkpoint layout in circulation, and write them back out.

Layouts: the authors' official code, mmsegmentation, sssegmentation, and ours (a
plain ``CGNet.state_dict()`` or a Lightning checkpoint of the training module, whose network is
``net``). Each foreign layout is one function naming each of *our* keys the way that layout does, so
loading and exporting share one bijective mapping driven by the model at hand: whatever the model
has (ablations, depth, head bias) is exactly what the file must hold. Which module holds a part is
read from the parts table (:mod:`cgnet.models.parts`); the names inside a part follow its kind.

Loading is all or nothing: keys and shapes are checked in full before ``load_state_dict`` runs, and
a mismatch raises :class:`WeightsMismatchError` listing everything that does not fit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cgnet.models.blocks import OFFICIAL_BN_EPS, CGBlock, FGlo
from cgnet.models.cgnet import CGNet
from cgnet.models.parts import PARTS, Kind, Part, foreign_pattern, split_key
from cgnet.models.serialization import read_checkpoint

Format = Literal["official", "mmseg", "sssegmentation", "ours", "lightning"]
ExportFormat = Literal["official", "mmseg", "ours"]

SSSEG_BN_EPS = 1e-5
"""sssegmentation builds SyncBatchNorm with PyTorch's default eps, so its weights expect 1e-5."""

_FORMAT_BN_EPS: dict[str, float] = {
    "official": OFFICIAL_BN_EPS,
    "mmseg": OFFICIAL_BN_EPS,  # its CGNet configs set SyncBN eps=1e-3
    "sssegmentation": SSSEG_BN_EPS,
}
_MAX_LISTED = 10
_IN_MEMORY = "<in-memory state dict>"


class WeightsMismatchError(ValueError):
    """A checkpoint that cannot be loaded whole: unknown layout, missing/extra keys or shapes."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` found and did, for logs and for callers that want to check."""

    format: Format
    num_tensors: int  # taken from the checkpoint (defaults filled in are not counted)
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        head = f"loaded {self.num_tensors} tensors from {self.source} ({self.format} format)"
        return "\n  ".join([head, *self.notes])


# --------------------------------------------------------------------------------------------------
# Key naming: our key -> the foreign layout's key.
# --------------------------------------------------------------------------------------------------

# Names inside a part, ours -> theirs, by the part's kind ("" matches all: the names agree).
_SAME: tuple[tuple[str, str], ...] = (("", ""),)
_OFFICIAL_INNER: dict[Kind, tuple[tuple[str, str], ...]] = {
    "stem": _SAME,
    "join": _SAME,
    "classifier": _SAME,
    "cg_down": (
        ("conv_in.", "conv1x1."),
        ("f_loc.", "F_loc.conv."),
        ("f_sur.", "F_sur.conv."),
        ("f_joi.", ""),  # the authors' CG-Down block holds f_joi's BN and PReLU directly
        ("reduce.", "reduce.conv."),
        ("f_glo.", "F_glo."),
    ),
    "cg_blocks": (
        ("conv_in.", "conv1x1."),
        ("f_loc.", "F_loc.conv."),
        ("f_sur.", "F_sur.conv."),
        ("f_joi.", "bn_prelu."),
        ("f_glo.", "F_glo."),
    ),
}


def _mm_inner(kind: Kind, *, sequential: bool) -> tuple[tuple[str, str], ...]:
    """mmseg's names inside a part; sssegmentation (``sequential``) indexes its ConvBNAct layers."""
    conv_bn_act = (
        (("conv.", "0."), ("bn.", "1."), ("act.", "2."))
        if sequential
        else (("conv.", "conv."), ("bn.", "bn."), ("act.", "activate."))
    )
    if kind == "stem":
        return conv_bn_act
    if kind == "join":
        return (("bn.", "0."), ("act.", "1."))
    if kind in ("cg_down", "cg_blocks"):
        return (
            *((f"conv_in.{a}", f"conv1x1.{b}") for a, b in conv_bn_act),
            ("f_loc.", "f_loc."),
            ("f_sur.", "f_sur."),
            ("f_joi.bn.", "bn."),
            ("f_joi.act.", "activate."),
            ("reduce.", "bottleneck."),
            ("f_glo.", "f_glo."),
        )
    if kind == "classifier":
        return _SAME
    raise KeyError(f"mmseg holds no weights of a {kind} part")


def _replace_prefix(rest: str, table: Iterable[tuple[str, str]], key: str) -> str:
    for ours, theirs in table:
        if rest.startswith(ours):
            return theirs + rest[len(ours) :]
    raise KeyError(f"no foreign name for parameter {key!r}")


def _split(key: str, layout: str) -> tuple[Part, int | None, str]:
    try:
        return split_key(key)
    except KeyError:
        raise KeyError(f"no {layout} name for parameter {key!r}") from None


def _official_name(key: str, classifier_index: int = 0) -> str:
    """The authors' names: level1_i stem, b1/bn_prelu_2/bn_prelu_3 joins, levelS_0 and levelS.k."""
    part, k, rest = _split(key, "official")
    module = part.foreign("official", k, head=classifier_index)
    return f"{module}.{_replace_prefix(rest, _OFFICIAL_INNER[part.kind], key)}"


def _mm_name(key: str, *, sequential: bool) -> str:
    """mmsegmentation's names (``sequential=False``) or sssegmentation's (nn.Sequential indices)."""
    part, k, rest = _split(key, "mmseg/sssegmentation")
    module = part.foreign("sssegmentation" if sequential else "mmseg", k)
    return f"{module}.{_replace_prefix(rest, _mm_inner(part.kind, sequential=sequential), key)}"


def _own_pattern() -> re.Pattern[str]:
    """Our keys: a list part's carry an index; the classifier is a bare conv, which keeps the
    official ``classifier.0.conv.`` out."""
    alternatives = []
    for part in PARTS:
        if part.is_list:
            alternatives.append(rf"{part.name}\.\d+\.")
        elif part.kind == "classifier":
            alternatives.append(rf"{part.name}\.(?:weight|bias)$")
        elif part.has_weights:
            alternatives.append(rf"{part.name}\.")
    return re.compile(rf"^(?:{'|'.join(alternatives)})")


# --------------------------------------------------------------------------------------------------
# Reading and recognising a checkpoint.
# --------------------------------------------------------------------------------------------------

_SIGNATURES: dict[Format, re.Pattern[str]] = {
    "official": foreign_pattern("official"),
    "mmseg": re.compile(r"^(backbone|decode_head|auxiliary_head)\."),
    "sssegmentation": re.compile(r"^(backbone_net|decoder|auxiliary_decoder)\."),
    "lightning": re.compile(r"^net\."),
    "ours": _own_pattern(),
}
# Training-only heads that inference never uses: dropped with a note (and nothing else is dropped).
_AUXILIARY = {"mmseg": "auxiliary_head.", "sssegmentation": "auxiliary_decoder."}


def _read(
    source: str | os.PathLike[str] | Mapping[str, Any], *, trust: bool = False
) -> tuple[Any, str, list[str]]:
    """The raw checkpoint object, a printable name for it, and notes on how it was read.

    Files go through the one safe reader: no fallback that would run the file's pickle unasked.
    """
    if isinstance(source, Mapping):
        return source, _IN_MEMORY, []
    path = Path(source)
    notes = ["read in full (weights_only=False): the caller trusts the file"] if trust else []
    return read_checkpoint(path, trust=trust), str(path), notes


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Tensor], list[str]]:
    """The flat state dict inside a checkpoint, with DataParallel/torch.compile prefixes removed."""
    notes: list[str] = []
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            notes.append(f"state dict taken from the checkpoint's {wrapper!r} entry")
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsMismatchError(
            f"cannot load {source} (format unknown): not a state dict or checkpoint, "
            f"got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsMismatchError(
            f"cannot load {source} (format unknown): entries that are not named tensors: "
            + _listing(bad)
        )
    state = dict(obj)
    if any("_orig_mod." in k for k in state):
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
        notes.append("removed torch.compile's '_orig_mod.' prefix")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
        notes.append("removed DataParallel's 'module.' prefix")
    return state, notes


def _detect(state: Mapping[str, Tensor]) -> Format | None:
    """The layout most keys follow (so a few stray keys show up as 'unexpected', not 'unknown')."""
    scores = {fmt: sum(1 for k in state if sig.match(k)) for fmt, sig in _SIGNATURES.items()}
    best = max(scores, key=lambda fmt: scores[fmt])
    return best if scores[best] else None


# --------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _describe(model: CGNet) -> str:
    return f"CGNet(num_classes={model.num_classes}, M={model.M}, N={model.N})"


def _namer(fmt: Format, state: Mapping[str, Tensor]) -> tuple[Callable[[str], str], list[str]]:
    """Our key -> this checkpoint's key, plus notes on variants found (official dropout head)."""
    if fmt == "official":
        index = 1 if "classifier.1.conv.weight" in state else 0
        notes = ["classifier stored as classifier.1 (trained with Dropout2d)"] if index else []
        return (lambda k: _official_name(k, index)), notes
    if fmt in ("mmseg", "sssegmentation"):
        sequential = fmt == "sssegmentation"
        return (lambda k: _mm_name(k, sequential=sequential)), []
    if fmt == "lightning":
        return (lambda k: f"net.{k}"), []
    return (lambda k: k), []


def _head_hints(model: CGNet, state: Mapping[str, Tensor], name: Callable[[str], str]) -> list[str]:
    """Plain-words causes for the commonest mismatches: class count and head bias."""
    hints: list[str] = []
    weight = state.get(name("classifier.weight"))
    if weight is not None and weight.ndim >= 1 and weight.shape[0] != model.num_classes:
        hints.append(f"checkpoint has {weight.shape[0]} classes, model has {model.num_classes}")
    ckpt_bias = name("classifier.bias") in state
    model_bias = model.classifier.bias is not None
    if ckpt_bias and not model_bias:
        hints.append("the checkpoint's classifier has a bias: build the model with head_bias=True")
    elif model_bias and not ckpt_bias:
        hints.append(
            "the checkpoint's classifier has no bias: build the model with head_bias=False"
        )
    return hints


def load_weights(
    model: CGNet,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    skip: Sequence[str] = (),
    trust: bool = False,
) -> LoadReport:
    """Load a checkpoint of any known layout into ``model``, all or nothing.

    Args:
        model: the network to fill; it must have the checkpoint's architecture (classes, depth,
            head bias). Its BatchNorm eps is set to what the weights were trained with: 1e-5 for
            sssegmentation, 1e-3 for official and mmseg (the report's notes say so).
        source: a file path (read on the CPU by :func:`cgnet.models.serialization.read_checkpoint`:
            tensors and plain data only) or an in-memory state dict / checkpoint dict.
        strict: with False, missing and unexpected keys are tolerated (and counted in the notes);
            shape conflicts and unknown layouts still raise.
        skip: prefixes of the model's parameter names (ours, e.g. ``"classifier."``) to leave at
            their current values, whatever the checkpoint holds for them: fine-tuning weights of
            another dataset starts a fresh classifier.
        trust: read a file whose pickle needs more than tensors and data, running its code (only
            for files whose source the user trusts: ``trust_checkpoint=true``).

    Raises:
        CheckpointError: a file that is missing, unreadable, or (without ``trust``) would run code.
        WeightsMismatchError: unknown layout, or keys/shapes that do not fit the model; the message
            names the source and layout and lists every problem.
    """
    obj, source_name, notes = _read(source, trust=trust)
    state, unwrap_notes = _unwrap(obj, source_name)
    notes += unwrap_notes
    fmt = _detect(state)
    if fmt is None:
        raise WeightsMismatchError(
            f"cannot load {source_name} (format unknown: not official, mmseg, sssegmentation or "
            f"ours); keys: {_listing(sorted(state))}"
        )
    name, variant_notes = _namer(fmt, state)
    notes += variant_notes

    ignored = [k for k in state if fmt in _AUXILIARY and k.startswith(_AUXILIARY[fmt])]
    if fmt == "lightning":
        ignored = [k for k in state if not k.startswith("net.")]
    if ignored:
        notes.append(f"ignored {len(ignored)} entries outside the network: {_listing(ignored)}")
    available = {k: v for k, v in state.items() if k not in set(ignored)}

    target = model.state_dict()
    wanted = {name(k): k for k in target}
    skipped = {f for f, k in wanted.items() if k.startswith(tuple(skip))}
    if skipped:
        wanted = {f: k for f, k in wanted.items() if f not in skipped}
        available = {f: v for f, v in available.items() if f not in skipped}
        notes.append(
            f"kept {len(skipped)} entries at their current values: {_listing(sorted(skipped))}"
        )
    missing = [f for f, k in wanted.items() if f not in available]
    # Checkpoints older than PyTorch 0.4.1 lack BN batch counters; only momentum=None reads them.
    counters = [f for f in missing if f.endswith("num_batches_tracked")]
    missing = [f for f in missing if f not in counters]
    unexpected = [f for f in available if f not in wanted]
    conflicts = [
        f"{f}: checkpoint {tuple(available[f].shape)}, model {tuple(target[k].shape)}"
        for f, k in wanted.items()
        if f in available and available[f].shape != target[k].shape
    ]
    if conflicts or (strict and (missing or unexpected)):
        lines = [f"cannot load {source_name} ({fmt} format) into {_describe(model)}:"]
        lines += [f"  {hint}" for hint in _head_hints(model, available, name)]
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape conflicts", conflicts),
        ):
            if items:
                lines.append(f"  {label} ({len(items)}): {_listing(items)}")
        raise WeightsMismatchError("\n".join(lines))
    if not strict and (missing or unexpected):
        notes.append(f"strict=False: left {len(missing)} missing keys at their current values")
        notes.append(f"strict=False: skipped {len(unexpected)} unexpected keys")

    converted = {k: available[f] for f, k in wanted.items() if f in available}
    num_loaded = len(converted)
    for f in counters:
        converted[wanted[f]] = torch.zeros((), dtype=torch.long)
    if counters:
        notes.append(f"{len(counters)} BatchNorm num_batches_tracked counters absent: set to 0")
    floats = {v.dtype for k, v in converted.items() if v.is_floating_point()}
    if floats - {v.dtype for v in target.values()}:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in floats))
        notes.append(f"checkpoint stores {names}: cast to the model's dtype")

    model.load_state_dict(converted, strict=not (missing or skipped))
    notes += _set_bn_eps(model, _FORMAT_BN_EPS.get(fmt), fmt, force_note=fmt == "sssegmentation")
    return LoadReport(fmt, num_loaded, source_name, tuple(notes))


def _set_bn_eps(model: nn.Module, eps: float | None, fmt: str, *, force_note: bool) -> list[str]:
    """Give every BatchNorm the eps the weights were trained with, since the logits depend on it."""
    if eps is None:
        return []
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    changed = sum(1 for m in bns if m.eps != eps)
    for m in bns:
        m.eps = eps
    if changed or force_note:
        return [f"set the eps of all {len(bns)} BatchNorm layers to {eps:g} ({fmt} weights use it)"]
    return []


# --------------------------------------------------------------------------------------------------
# Exporting.
# --------------------------------------------------------------------------------------------------


def _foreign_incompatibilities(model: CGNet, fmt: str) -> list[str]:
    """Why the foreign code cannot rebuild this model (it might load the file, yet compute else)."""
    problems: list[str] = []
    if model.classifier.bias is not None and fmt == "official":
        problems.append(
            "the official classifier has no bias (build the model with head_bias=False)"
        )
    if not model.input_injection:
        problems.append("input injection is always on there")
    if not isinstance(model.stem[0].act, nn.PReLU):
        problems.append("it uses PReLU everywhere (activation='relu' is not expressible)")
    if any(not isinstance(b.f_glo, FGlo) for b in _cg_blocks(model)):
        problems.append("f_glo is always on")
    if any(isinstance(b, CGBlock) and b.residual != "global" for b in _cg_blocks(model)):
        problems.append("its CG blocks use the global residual (GRL) only")
    bn_eps = {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if bn_eps != {OFFICIAL_BN_EPS}:
        problems.append(
            f"it runs BatchNorm with eps {OFFICIAL_BN_EPS:g}, the model has {sorted(bn_eps)}"
        )
    if fmt == "official":
        if model.M < 2 or model.N < 2:
            problems.append(f"the official code needs M, N >= 2 (model: M={model.M}, N={model.N})")
        layout = (
            model.stem[0].conv.out_channels,
            model.stage2_down.conv_in.conv.out_channels,
            model.stage3_down.conv_in.conv.out_channels,
            model.stage2_down.f_sur.dilation[0],
            model.stage3_down.f_sur.dilation[0],
        )
        if layout != (32, 64, 128, 2, 4):
            problems.append("the official code fixes widths (32, 64, 128) and dilations (2, 4)")
    return problems


def _cg_blocks(model: CGNet) -> list[nn.Module]:
    """Every CG block and CG-Down block, in forward order."""
    blocks: list[nn.Module] = []
    for part in PARTS:
        if part.kind == "cg_down":
            blocks.append(getattr(model, part.name))
        elif part.kind == "cg_blocks":
            blocks.extend(getattr(model, part.name))
    return blocks


def export_weights(model: CGNet, format: ExportFormat) -> dict[str, Any]:
    """The model's weights as a checkpoint of another layout, ready for ``torch.save``.

    ``official`` gives ``{'epoch': 0, 'model': sd}`` (classifier.1 when the model has dropout) for
    the authors' code; ``mmseg`` gives ``{'meta': ..., 'state_dict': sd}`` for mmsegmentation's
    CGNet + FCNHead(num_convs=0), whose head needs ``head_bias=True``; ``ours`` a plain state dict.
    Tensors are detached copies, so the result does not change with the model.

    Raises:
        ValueError: unknown format, or a model the target code cannot express (ablations, head
            bias for official, none for mmseg, ...): the file would silently compute otherwise.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if format == "ours":
        return state
    if format not in ("official", "mmseg"):
        raise ValueError(f"export format must be 'official', 'mmseg' or 'ours', got {format!r}")
    problems = _foreign_incompatibilities(model, format)
    if format == "mmseg" and model.classifier.bias is None:
        problems.append("mmseg's decode head has a bias (build the model with head_bias=True)")
    if problems:
        raise ValueError(
            f"cannot export {_describe(model)} to the {format} format: " + "; ".join(problems)
        )
    if format == "official":
        index = 0 if isinstance(model.dropout, nn.Identity) else 1
        return {"epoch": 0, "model": {_official_name(k, index): v for k, v in state.items()}}
    meta = {
        "exported_by": "cgnet",
        "num_classes": model.num_classes,
        "num_blocks": (model.M, model.N),
        "bn_eps": OFFICIAL_BN_EPS,
    }
    return {
        "meta": meta,
        "state_dict": {_mm_name(k, sequential=False): v for k, v in state.items()},
    }
