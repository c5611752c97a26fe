"""Checkpoint loading and export, checked against the authors' CamVid model and its logits.

The mmseg and sssegmentation fixtures are built here by renaming the official keys with rules taken
from those projects' sources (not with our export code), so the mapping is checked independently.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from cgnet.errors import CheckpointError
from cgnet.models import CGNet
from cgnet.models.weights import LoadReport, WeightsMismatchError, export_weights, load_weights

CKPT = "cgnet_official_camvid_m3n21.pth"
LOGITS = "official_camvid_logits.pt"

# official -> mmsegmentation (mmseg/models/backbones/cgnet.py + FCNHead.conv_seg), in this order.
MMSEG_RULES = [
    (r"^level1_(\d)\.act\.", r"stem.\1.activate."),
    (r"^level1_(\d)\.", r"stem.\1."),
    (r"^b1\.bn\.", "norm_prelu_0.0."),
    (r"^b1\.act\.", "norm_prelu_0.1."),
    (r"^bn_prelu_2\.bn\.", "norm_prelu_1.0."),
    (r"^bn_prelu_2\.act\.", "norm_prelu_1.1."),
    (r"^bn_prelu_3\.bn\.", "norm_prelu_2.0."),
    (r"^bn_prelu_3\.act\.", "norm_prelu_2.1."),
    # level2_0 / level2.k -> level1.0 / level1.(k+1), same for stage 3, in one pass.
    (r"^level([23])(?:_0|\.(\d+))\.", lambda m: f"level{int(m[1]) - 1}.{int(m[2] or -1) + 1}."),
    (r"\.conv1x1\.act\.", ".conv1x1.activate."),
    (r"\.F_loc\.conv\.", ".f_loc."),
    (r"\.F_sur\.conv\.", ".f_sur."),
    (r"\.F_glo\.", ".f_glo."),
    (r"\.bn_prelu\.bn\.", ".bn."),
    (r"\.bn_prelu\.act\.", ".activate."),
    (r"^(level\d\.0)\.act\.", r"\1.activate."),
    (r"\.reduce\.conv\.", ".bottleneck."),
]


def official_to_mmseg(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            out["decode_head.conv_seg.weight"] = value
            out["decode_head.conv_seg.bias"] = torch.zeros(value.shape[0])
            continue
        for pattern, repl in MMSEG_RULES:
            key = re.sub(pattern, repl, key)
        out["backbone." + key] = value
    return out


def mmseg_to_ssseg(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """sssegmentation: Sequential indices in the stem and conv1x1; decoder = (Dropout2d, Conv2d)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.replace("decode_head.conv_seg.", "decoder.1.")
        key = re.sub(r"^backbone\.", "backbone_net.", key)
        key = re.sub(r"(stem\.\d|conv1x1)\.conv\.", r"\1.0.", key)
        key = re.sub(r"(stem\.\d|conv1x1)\.bn\.", r"\1.1.", key)
        key = re.sub(r"(stem\.\d|conv1x1)\.activate\.", r"\1.2.", key)
        out[key] = value
    return out


@pytest.fixture(autouse=True)
def _flush_denormal() -> Iterator[None]:
    # Half the released parameters are subnormal floats: without this, CPU inference crawls.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def official(reference_dir: Path) -> dict[str, Tensor]:
    ckpt = torch.load(reference_dir / CKPT, map_location="cpu", weights_only=True)
    return ckpt["model"]


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> dict[str, dict[str, Tensor]]:
    return torch.load(reference_dir / LOGITS, map_location="cpu", weights_only=True)


def assert_reproduces(
    model: nn.Module, reference: dict[str, dict[str, Tensor]], cases: tuple[str, ...] = ("even",)
) -> None:
    model.eval()
    for case in cases:
        with torch.no_grad():
            logits = model(reference[case]["input"])
        expected = reference[case]["logits"]
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() <= 1e-4, case
        assert torch.equal(logits.argmax(1), expected.argmax(1)), case


def randomize(model: nn.Module) -> nn.Module:
    """Every parameter and buffer random, so a round trip cannot pass by default values."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            else:
                tensor.normal_(0.0, 0.1)
    return model


# --------------------------------------------------------------------------------------------------
# The released checkpoint, in every layout it circulates in.
# --------------------------------------------------------------------------------------------------


def test_released_checkpoint_reproduces_official_logits(
    reference_dir: Path, reference: dict[str, dict[str, Tensor]]
) -> None:
    model = CGNet(11)
    report = load_weights(model, reference_dir / CKPT)
    assert isinstance(report, LoadReport)
    assert report.format == "official" and report.num_tensors == 498
    assert report.source == str(reference_dir / CKPT)
    assert not any("weights_only" in note for note in report.notes)
    assert_reproduces(model, reference, ("even", "odd"))


def test_dataparallel_prefix(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    model = CGNet(11)
    report = load_weights(
        model, {"epoch": 5, "model": {f"module.{k}": v for k, v in official.items()}}
    )
    assert report.format == "official"
    assert any("module." in note for note in report.notes)
    assert_reproduces(model, reference)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_official_dropout_variant(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]], dropout: float
) -> None:
    state = {k.replace("classifier.0.", "classifier.1."): v for k, v in official.items()}
    model = CGNet(11, dropout=dropout)
    report = load_weights(model, state)
    assert report.format == "official"
    assert any("classifier.1" in note for note in report.notes)
    assert_reproduces(model, reference)


def test_mmseg_checkpoint(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    state = official_to_mmseg(official)
    aux = {"auxiliary_head.conv_seg.weight": torch.zeros(11, 131, 1, 1)}
    model = CGNet(11, head_bias=True)
    report = load_weights(model, {"meta": {"CLASSES": None}, "state_dict": {**state, **aux}})
    assert report.format == "mmseg" and report.num_tensors == 499
    assert any("auxiliary_head.conv_seg.weight" in note for note in report.notes)
    assert_reproduces(model, reference)
    # Our exporter writes exactly the names derived from mmseg's source.
    assert set(export_weights(model, "mmseg")["state_dict"]) == set(state)


def test_mmseg_checkpoint_needs_head_bias(official: dict[str, Tensor]) -> None:
    model = CGNet(11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match="head_bias=True") as err:
        load_weights(model, official_to_mmseg(official))
    assert "mmseg format" in str(err.value) and "decode_head.conv_seg.bias" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sssegmentation_checkpoint(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    state = mmseg_to_ssseg(official_to_mmseg(official))
    model = CGNet(11, head_bias=True)
    report = load_weights(model, {"epoch": 340, "model": state})
    assert report.format == "sssegmentation"
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-5 for m in bns)
    assert any("1e-05" in note and "BatchNorm" in note for note in report.notes)
    # The official weights were trained at eps 1e-3: restoring it proves every tensor landed right.
    for m in bns:
        m.eps = 1e-3
    assert_reproduces(model, reference)


def test_official_weights_restore_official_bn_eps(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    model = CGNet(11, bn_eps=1e-5)
    report = load_weights(model, official)
    assert any("0.001" in note for note in report.notes)
    assert_reproduces(model, reference)


def _lightning_file(path: Path, official: dict[str, Tensor], hparams: object) -> Path:
    ours = CGNet(11)
    load_weights(ours, official)
    state = {f"net.{k}": v for k, v in ours.state_dict().items()}
    state["criterion.weight"] = torch.ones(11)
    state["val_iou.confmat"] = torch.zeros(11, 11, dtype=torch.long)
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": hparams}, path)
    return path


def test_lightning_checkpoint_file(
    tmp_path: Path, official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    path = _lightning_file(tmp_path / "last.ckpt", official, {"model": {"M": 3, "N": 21}})
    model = CGNet(11)
    report = load_weights(model, path)  # plain hyper-parameters, as ours: no opt-in needed
    assert report.format == "lightning" and report.num_tensors == 498
    assert not any("weights_only" in note for note in report.notes)
    assert any("criterion.weight" in note and "val_iou.confmat" in note for note in report.notes)
    assert_reproduces(model, reference)


def test_pickled_objects_need_the_opt_in(
    tmp_path: Path, official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    """A file whose pickle builds objects (here OmegaConf's) is refused, never read in full
    silently; ``trust=True`` (the user's trust_checkpoint=true) reads it."""
    hparams = OmegaConf.create({"model": {"M": 3, "N": 21}})
    path = _lightning_file(tmp_path / "last.ckpt", official, hparams)
    model = CGNet(11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "omegaconf.dictconfig.DictConfig" in message and "trust_checkpoint=true" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    report = load_weights(model, path, trust=True)
    assert report.format == "lightning" and report.num_tensors == 498
    assert any("weights_only=False" in note for note in report.notes)
    assert_reproduces(model, reference)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "net._orig_mod."])
def test_torch_compile_prefix(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]], prefix: str
) -> None:
    ours = CGNet(11)
    load_weights(ours, official)
    model = CGNet(11)
    report = load_weights(model, {f"{prefix}{k}": v for k, v in ours.state_dict().items()})
    assert report.format == ("lightning" if prefix.startswith("net.") else "ours")
    assert any("_orig_mod." in note for note in report.notes)
    assert_reproduces(model, reference)


def test_checkpoint_without_bn_counters(
    official: dict[str, Tensor], reference: dict[str, dict[str, Tensor]]
) -> None:
    state = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    model = CGNet(11)
    report = load_weights(model, state)
    assert report.num_tensors == len(state) == 498 - 54  # 54 BatchNorms
    assert any("54 BatchNorm num_batches_tracked" in note for note in report.notes)
    assert_reproduces(model, reference)


# --------------------------------------------------------------------------------------------------
# Failures: clear, complete, and never a partial load.
# --------------------------------------------------------------------------------------------------


def test_wrong_number_of_classes(reference_dir: Path) -> None:
    model = CGNet(19)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(model, reference_dir / CKPT)
    message = str(err.value)
    assert str(reference_dir / CKPT) in message and "official format" in message
    assert "checkpoint has 11 classes, model has 19" in message
    assert "classifier.0.conv.weight: checkpoint (11, 256, 1, 1), model (19, 256, 1, 1)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_key(official: dict[str, Tensor]) -> None:
    state = dict(official)
    del state["level3.5.F_glo.fc.0.weight"]
    model = CGNet(11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        WeightsMismatchError, match=r"missing keys \(1\): level3\.5\.F_glo\.fc\.0\.weight"
    ):
        load_weights(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_key_tolerated_when_not_strict(official: dict[str, Tensor]) -> None:
    state = dict(official)
    del state["level3.5.F_glo.fc.0.weight"]
    model = CGNet(11)
    kept = model.stage3[5].f_glo.fc[0].weight.detach().clone()
    report = load_weights(model, state, strict=False)
    assert report.num_tensors == 497 and any("1 missing" in note for note in report.notes)
    assert torch.equal(model.stage3[5].f_glo.fc[0].weight, kept)


def test_unexpected_key(official: dict[str, Tensor]) -> None:
    state = {**official, "level3.99.F_loc.conv.weight": torch.zeros(64, 1, 3, 3)}
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \(1\): level3\.99\.F_loc"):
        load_weights(CGNet(11), state)


def test_depth_mismatch_lists_are_truncated(official: dict[str, Tensor]) -> None:
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(CGNet(11, N=9), official)
    message = str(err.value)
    assert "unexpected keys (228)" in message and "and 218 more" in message
    assert "missing keys" not in message


@pytest.mark.parametrize(
    "garbage",
    [{"epoch": 3, "note": "hello"}, {"weights": torch.zeros(3), "other.bias": torch.zeros(3)}, {}],
)
def test_garbage_is_an_unknown_format(garbage: dict[str, object]) -> None:
    with pytest.raises(WeightsMismatchError, match=r"<in-memory state dict> \(format unknown"):
        load_weights(CGNet(11), garbage)


def test_garbage_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsMismatchError, match=re.escape(f"{path} (format unknown")):
        load_weights(CGNet(11), path)


# --------------------------------------------------------------------------------------------------
# Export and round trips.
# --------------------------------------------------------------------------------------------------

MODELS = {
    "default": {},
    "M1N1": {"M": 1, "N": 1},
    "dropout": {"dropout": 0.1},
    "dropout_bias": {"dropout": 0.1, "head_bias": True},
    "M1N1_bias": {"M": 1, "N": 1, "head_bias": True},
}
EXPORTABLE = {
    "ours": set(MODELS),
    "official": {"default", "dropout"},
    "mmseg": {"dropout_bias", "M1N1_bias"},
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fmt", list(EXPORTABLE))
def test_round_trip_is_bitwise_exact(name: str, fmt: str) -> None:
    kwargs = MODELS[name]
    source = randomize(CGNet(19, **kwargs)).eval()
    if name not in EXPORTABLE[fmt]:
        with pytest.raises(ValueError, match=f"cannot export .* to the {fmt} format"):
            export_weights(source, fmt)  # type: ignore[arg-type]
        return
    exported = export_weights(source, fmt)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=True)  # exports need no pickled objects

    target = CGNet(19, **kwargs)
    report = load_weights(target, reloaded)
    assert report.format == fmt and report.num_tensors == len(source.state_dict())
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source(x))


def test_export_official_layout(official: dict[str, Tensor]) -> None:
    model = CGNet(11)
    load_weights(model, official)
    exported = export_weights(model, "official")
    assert exported["epoch"] == 0 and set(exported["model"]) == set(official)
    assert all(torch.equal(exported["model"][k], v) for k, v in official.items())
    dropout = export_weights(CGNet(11, dropout=0.1), "official")["model"]
    assert "classifier.1.conv.weight" in dropout and "classifier.0.conv.weight" not in dropout


@pytest.mark.parametrize(
    ("kwargs", "fmt", "reason"),
    [
        ({"head_bias": True}, "official", "official classifier has no bias"),
        ({}, "mmseg", "head_bias=True"),
        ({"M": 1}, "official", "M, N >= 2"),
        ({"use_f_glo": False, "head_bias": True}, "mmseg", "f_glo"),
        ({"activation": "relu"}, "official", "PReLU"),
        ({"residual": "local"}, "official", "residual"),
        ({"input_injection": False}, "official", "injection"),
        ({"bn_eps": 1e-5, "head_bias": True}, "mmseg", "eps"),
        ({"dilations": (2, 8)}, "official", "dilations"),
    ],
)
def test_export_refuses_what_the_target_cannot_express(
    kwargs: dict[str, object], fmt: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        export_weights(CGNet(19, **kwargs), fmt)  # type: ignore[arg-type]


def test_half_precision_checkpoint_is_cast(official: dict[str, Tensor]) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in official.items()}
    model = CGNet(11)
    report = load_weights(model, state)
    assert any("float16" in note for note in report.notes)
    assert model.classifier.weight.dtype == torch.float32


def test_export_unknown_format() -> None:
    with pytest.raises(ValueError, match="'official', 'mmseg' or 'ours'"):
        export_weights(CGNet(19), "onnx")  # type: ignore[arg-type]
