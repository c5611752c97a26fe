"""Prepared data (python -m cgnet.data.prepare, data.prepared=...): same batches as the PNG tree,
sharded over DDP ranks, resumable mid-epoch, streamed from S3, and broken folders refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from rich.console import Console

from cgnet.data import (
    CamVidDataModule,
    CityscapesDataModule,
    DataError,
    SegmentationDataModule,
    SyntheticCityscapesDataModule,
)
from cgnet.data import prepare as prepare_module
from cgnet.data.prepare import prepare
from cgnet.data.prepared import PreparedSplit

TESTS = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
LOADER = {"num_workers": 0, "persistent_workers": False, "val_batch_size": 2, "batch_size": 3}


def prepared(datamodule: SegmentationDataModule, out: Path, **kwargs: Any) -> Path:
    stages = kwargs.pop("stages", ["train", "val", "test"])
    prepare(datamodule, out, stages=stages, num_workers=1, console=Console(quiet=True), **kwargs)
    return out


def reading(datamodule: SegmentationDataModule, out: Path) -> SegmentationDataModule:
    """The same DataModule settings, reading ``out`` instead of the PNG tree."""
    clone = type(datamodule).__new__(type(datamodule))
    clone.__dict__.update(datamodule.__dict__)
    clone.prepared, clone._prepared, clone.datasets, clone._weights = str(out), None, {}, None
    return clone


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x["id"] == y["id"]
        assert x["image"].dtype == y["image"].dtype == torch.uint8
        assert x["mask"].dtype == y["mask"].dtype == torch.uint8
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert torch.equal(x["size"], y["size"])


@pytest.fixture(scope="module")
def cityscapes_prepared(cityscapes_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    png = CityscapesDataModule(root=str(cityscapes_tree), **LOADER)
    return prepared(png, tmp_path_factory.mktemp("prepared") / "cityscapes")


@pytest.mark.parametrize("dataset", ["cityscapes", "camvid", "synthetic"])
def test_validation_and_test_batches_equal_the_png_tree(
    dataset: str, cityscapes_tree: Path, camvid_tree: Path, tmp_path: Path
) -> None:
    if dataset == "cityscapes":
        png: SegmentationDataModule = CityscapesDataModule(root=str(cityscapes_tree), **LOADER)
    elif dataset == "camvid":
        png = CamVidDataModule(root=str(camvid_tree), **LOADER)
    else:
        sizes = {"num_train": 4, "num_val": 3, "num_test": 1, "image_size": (48, 96)}
        png = SyntheticCityscapesDataModule(root=str(tmp_path / "synthetic"), **sizes, **LOADER)
    fast = reading(png, prepared(png, tmp_path / "prepared"))
    for loader in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        assert_same_batches(list(getattr(png, loader)()), list(getattr(fast, loader)()))
    assert isinstance(fast.dataset("val"), PreparedSplit)


def test_joined_splits_list_files_and_class_weights_match(
    cityscapes_tree: Path, tmp_path: Path
) -> None:
    val_list = tmp_path / "val.lst"
    lines = [
        f"{p} {str(p).replace('leftImg8bit', 'gtFine_labelIds').replace('/gtFine_labelIds/', '/gtFine/')}"
        for p in sorted((cityscapes_tree / "leftImg8bit" / "val").rglob("*.png"))[:2]
    ]
    val_list.write_text("\n".join(lines) + "\n")
    settings = {
        "root": str(cityscapes_tree),
        "train_split": "train+train_extra",
        "val_list": str(val_list),
        "class_weights": "computed",
        "augment_on": "device",  # no CPU transform: training samples come as stored
        **LOADER,
    }
    png = CityscapesDataModule(**settings)
    fast = reading(png, prepared(png, tmp_path / "prepared", stages=["train", "val"]))
    train_png, train_fast = png.dataset("train"), fast.dataset("train")
    assert len(train_png) == len(train_fast) == 9  # 6 fine + 3 coarse
    for i in range(len(train_png)):
        a, b = train_png[i], train_fast[i]
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])
    assert_same_batches(list(png.val_dataloader()), list(fast.val_dataloader()))
    torch.testing.assert_close(png.class_weight_tensor(), fast.class_weight_tensor())
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert [(e["split"], e["count"]) for e in manifest["splits"]] == [
        ("train+train_extra", 9),
        ("val", 2),
    ]
    assert manifest["class_names"][0] == "road" and manifest["litdata_version"]


def test_training_batches_are_augmented_crops(cityscapes_prepared: Path, tmp_path: Path) -> None:
    settings = {"root": str(tmp_path / "absent"), "crop_size": (32, 48), **LOADER}
    fast = CityscapesDataModule(**settings, prepared=str(cityscapes_prepared))
    fast.setup("fit")
    fast.check_crop_fits()
    torch.manual_seed(0)
    batches = list(fast.train_dataloader())
    assert len(batches) == 2  # 6 images, batch 3, drop_last
    assert batches[0]["image"].shape == (3, 3, 32, 48) and batches[0]["mask"].dtype == torch.uint8
    ids = [i for b in batches for i in b["id"]]
    assert len(set(ids)) == 6
    too_big = CityscapesDataModule(
        **{**settings, "crop_size": (512, 512)}, prepared=str(cityscapes_prepared)
    )
    with pytest.raises(DataError, match=r"larger than the training images .* \(64x128 x 2.0"):
        too_big.check_crop_fits()


# ------------------------------------------------------------------------------ broken folders
def _load(root: Path, prepared_dir: Path, stage: str = "val") -> None:
    CityscapesDataModule(root=str(root), prepared=str(prepared_dir), **LOADER).dataset(stage)


def test_broken_prepared_data_is_one_data_error_naming_the_file(
    cityscapes_prepared: Path, camvid_tree: Path, tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(cityscapes_prepared, tmp_path / "broken"))
    chunk = next((broken / "val").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"chunk {chunk} is truncated \(100 of \d+ bytes\)"):
        _load(tmp_path, broken)
    chunk.unlink()
    with pytest.raises(DataError, match=rf"{chunk} does not exist"):
        _load(tmp_path, broken)
    (broken / "train" / "index.json").unlink()
    with pytest.raises(DataError, match=rf"{broken / 'train' / 'index.json'} does not exist"):
        _load(tmp_path, broken, "train")
    with pytest.raises(DataError, match=r"has no prepared split nope; it holds: train, val, test"):
        CityscapesDataModule(prepared=str(broken), val_split="nope", **LOADER).dataset("val")

    camvid = prepared(CamVidDataModule(root=str(camvid_tree), **LOADER), tmp_path / "camvid")
    with pytest.raises(DataError, match=rf"{camvid / 'manifest.json'} holds prepared 'camvid'"):
        _load(tmp_path, camvid)
    manifest = json.loads((cityscapes_prepared / "manifest.json").read_text())
    other = tmp_path / "relabelled"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({**manifest, "label_luts_sha256": "0" * 16}))
    with pytest.raises(DataError, match=r"manifest.json was prepared with another label mapping"):
        _load(tmp_path, other)


def test_broken_prepared_data_is_one_line_from_the_cli(
    cityscapes_prepared: Path, tmp_path: Path
) -> None:
    from helpers import run_cli

    broken = Path(shutil.copytree(cityscapes_prepared, tmp_path / "broken"))
    chunk = next((broken / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:100])
    args = ["data=cityscapes", f"data.root={tmp_path}", f"data.prepared={broken}", "train=false"]
    result = run_cli("cgnet.train", [*args, "trainer.accelerator=cpu"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data error: chunk ") and chunk.name in lines[0]


def test_interrupted_prepare_never_loads_and_resumes(
    cityscapes_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = CityscapesDataModule(root=str(cityscapes_tree), **LOADER)
    out = tmp_path / "out"
    real, written = prepare_module.write_split, []

    def interrupted(datamodule: Any, samples: Any, folder: Path, **kwargs: Any) -> Any:
        if written:  # the second split is killed half-way: a partial folder with chunks is left
            partial = folder.with_name(folder.name + ".partial")
            partial.mkdir()
            (partial / "chunk-0-0.bin").write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
        written.append(folder.name)
        return real(datamodule, samples, folder, **kwargs)

    monkeypatch.setattr(prepare_module, "write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepared(png, out)
    assert written == ["train"] and (out / "val.partial").is_dir()
    with pytest.raises(
        DataError, match=rf"{out / 'manifest.json'} does not exist: .* not finished"
    ):
        _load(cityscapes_tree, out, "train")

    # another dataset's preparation may not take the folder over
    other = CityscapesDataModule(root=str(cityscapes_tree), val_split="train", **LOADER)
    with pytest.raises(DataError, match=r"holds a partly prepared copy of 'cityscapes'"):
        prepared(other, out)

    monkeypatch.setattr(prepare_module, "write_split", real)
    resumed: list[str] = []
    monkeypatch.setattr(
        prepare_module,
        "write_split",
        lambda dm, s, folder, **kw: resumed.append(folder.name) or real(dm, s, folder, **kw),
    )
    prepared(png, out)
    assert resumed == ["val", "test"]  # train was finished and kept
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "train", "val"]
    assert_same_batches(list(png.val_dataloader()), list(reading(png, out).val_dataloader()))

    # a finished folder is left alone; another dataset's is refused
    resumed.clear()
    again = prepare(png, out, stages=["train", "val", "test"], num_workers=1)
    assert again["splits"][0]["count"] == 6 and resumed == []
    with pytest.raises(DataError, match=r"holds prepared 'cityscapes' data .* choose another"):
        prepared(other, out)


def test_prepare_command(tmp_path: Path) -> None:
    from helpers import run_cli

    out = tmp_path / "out"
    data = [
        "data=synthetic_camvid",
        f"data.root={tmp_path / 'camvid'}",
        "data.num_train=2",
        "data.num_val=2",
        "data.num_test=1",
        "data.image_size=[32,64]",
    ]
    result = run_cli("cgnet.data.prepare", [*data, f"output={out}", "num_workers=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "camvid" and [e["count"] for e in manifest["splits"]] == [2, 2, 1]
    # the same files read as real CamVid: another preparation, refused
    real = ["data=camvid", f"data.root={tmp_path / 'camvid'}", f"output={out}"]
    other = run_cli("cgnet.data.prepare", real, tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip().startswith("data error: ") and "holds prepared 'camvid'" in (
        other.stderr
    )


# ------------------------------------------------------------------------------------- DDP ranks
def _rank_ids(rank: int, prepared_dir: str, port: int, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    datamodule = CityscapesDataModule(prepared=prepared_dir, **LOADER)
    torch.manual_seed(0)
    train = [i for batch in datamodule.train_dataloader() for i in batch["id"]]
    # validation as Lightning reads it under DDP: the indexed split through a distributed sampler
    loader = datamodule.val_dataloader()
    sampler = torch.utils.data.DistributedSampler(loader.dataset, shuffle=False)
    val = [loader.dataset[i]["id"] for i in sampler]
    Path(out, f"{rank}.json").write_text(json.dumps({"train": train, "val": val}))
    torch.distributed.destroy_process_group()


def test_two_ddp_ranks_read_disjoint_shards_covering_the_split(
    cityscapes_prepared: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(
        _rank_ids, args=(str(cityscapes_prepared), port, str(tmp_path)), nprocs=2, join=True
    )
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    everything = CityscapesDataModule(prepared=str(cityscapes_prepared), **LOADER)
    train_ids = {everything.dataset("train")[i]["id"] for i in range(6)}
    val_ids = {everything.dataset("val")[i]["id"] for i in range(3)}
    # 6 training images = 2 ranks x 1 batch of 3: nothing dropped, each image read once
    assert [len(r["train"]) for r in ranks] == [3, 3]
    assert set(ranks[0]["train"]).isdisjoint(ranks[1]["train"])
    assert set(ranks[0]["train"]) | set(ranks[1]["train"]) == train_ids
    # 3 validation images on 2 ranks: every one is scored (the sampler pads with a repeat)
    assert set(ranks[0]["val"]) | set(ranks[1]["val"]) == val_ids


# ---------------------------------------------------------------------------- mid-epoch resume
class RecordIds(Callback):
    """Appends each training step's (global step, sample ids) to ``record`` (JSON lines)."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        with self.record.open("a") as file:
            file.write(json.dumps([trainer.global_step, list(batch["id"])]) + "\n")


def record_starts(record: Path) -> str:
    return record.with_suffix(".starts").read_text()


def _steps(record: Path) -> list[list[Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reads_the_uninterrupted_epoch(tmp_path: Path) -> None:
    from helpers import run_cli, tiny_overrides

    root = tmp_path / "synthetic"
    png = SyntheticCityscapesDataModule(
        root=str(root), num_train=8, num_val=4, num_test=2, image_size=(64, 128)
    )
    data = prepared(png, tmp_path / "prepared", stages=["train", "val"])
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(HERE), os.environ.get("PYTHONPATH", "")])}

    def train(run_dir: Path, record: Path, kill: int | None, *extra: str) -> Any:
        args = [
            *tiny_overrides(root, tmp_path),
            f"data.prepared={data}",
            "data.batch_size=2",  # 4 steps per epoch
            "data.num_workers=1",
            "trainer.max_epochs=2",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "preview=false",
            f"hydra.run.dir={run_dir}",
            "+callbacks.ids._target_=test_data_prepared.RecordIds",
            f"+callbacks.ids.record={record}",
            "+callbacks.fault._target_=fault_callbacks.KillAtStep",
            f"+callbacks.fault.record={record.with_suffix('.starts')}",
            f"+callbacks.fault.step={'null' if kill is None else kill}",
            *extra,
        ]
        return run_cli("cgnet.train", args, tmp_path, env=env)

    full = tmp_path / "full.jsonl"
    result = train(tmp_path / "full", full, None)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = tmp_path / "killed.jsonl"
    result = train(tmp_path / "killed", killed, 6)  # the third step of the second epoch
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    result = train(tmp_path / "killed", killed, None, "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _steps(full)
    assert len(expected) == 8 and expected[:4] != expected[4:]  # epochs are shuffled apart
    # the killed run read steps 0..6 (killed before training 6); the resumed one goes on from 6
    assert _steps(killed) == expected[:7] + expected[6:]
    assert json.loads(record_starts(killed)) == [0, 6]


# -------------------------------------------------------------------------------------- S3
@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def upload(folder: Path, bucket: str, prefix: str) -> str:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
    return f"s3://{bucket}/{prefix}"


def test_training_streams_prepared_data_from_s3(
    s3_server: str, cityscapes_tree: Path, tmp_path: Path
) -> None:
    from cgnet.train import run
    from helpers import compose_config, tiny_overrides

    root = tmp_path / "synthetic"
    png = SyntheticCityscapesDataModule(
        root=str(root), num_train=8, num_val=4, num_test=2, image_size=(64, 128)
    )
    url = upload(prepared(png, tmp_path / "prepared", stages=["train", "val"]), "data", "synth/v1")
    shutil.rmtree(tmp_path / "prepared")
    shutil.rmtree(root)  # nothing local: every sample comes from the bucket
    overrides = [
        *tiny_overrides(root, tmp_path),
        f"data.prepared={url}",
        "trainer.max_steps=3",
        "preview=false",
    ]
    summary = run(compose_config("train", overrides, tmp_path / "run"))
    assert summary["output_dir"] and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not root.exists()
    with pytest.raises(DataError, match=r"cannot read s3://data/nothing/manifest.json"):
        CityscapesDataModule(prepared="s3://data/nothing", **LOADER).dataset("val")


def test_benchmark_compares_png_and_prepared(tmp_path: Path) -> None:
    from cgnet.data.benchmark import main

    args = ["--size", "64", "128", "--crop", "32", "64", "--images", "2", "--samples", "4"]
    out = tmp_path / "figures.json"
    results = main([*args, "--batch-size", "2", "--workers", "0", "--prepared", "--json", str(out)])
    figures = results["prepared"]
    assert set(figures["read_ms_per_image"]) == {"PNG tree", "prepared"}
    assert figures["dataloader_images_per_s"]["0"] > 0
    assert figures["bytes_per_image"] >= 64 * 128 * 4  # uint8 RGB + uint8 mask, uncompressed
    assert json.loads(out.read_text()) == results
    slow = main([*args, "--batch-size", "2", "--workers", "0", "--gpu-rate", "1e9"])
    assert slow["fed"] == {"PNG tree": {"fed": False, "fewest_workers": None}}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-n", "0"]))
