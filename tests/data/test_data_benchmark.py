"""The throughput benchmark runs end to end (tiny inputs; the real figures are in docs/data.md)."""

from __future__ import annotations

import json
from pathlib import Path

from cgnet.data.benchmark import main


def test_benchmark_reports_stages_and_loaders(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = ["--size", "64", "128", "--crop", "32", "64", "--images", "2", "--samples", "4"]
    results = main([*args, "--batch-size", "2", "--workers", "0", "1", "--json", str(out)])
    assert set(results["stage_ms_per_image"]) >= {
        "decode image",
        "decode label",
        "augment",
        "collate",
        "end to end",
    }
    assert results["images_per_s_one_core"] > 0
    assert set(results["dataloader_images_per_s"]) == {"0", "1"}
    assert json.loads(out.read_text()) == results
