"""One Markdown summary of a scripts/gpu_checks.sh run, from the JSON files it wrote.

python scripts/gpu_summary.py OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any


def load(out: Path, name: str) -> Any:
    path = out / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def inference_rows(data: Any) -> list[str]:
    rows = []
    for r in (data or {}).get("inference", []):
        choice = r.get("tuned", {}).get("choice", "")
        rejected = r.get("tuned", {}).get("rejected") or {}
        if rejected:  # forms the tuner skipped: failed to run, or computed something else
            choice += f"; rejected: {', '.join(rejected)}"
        rows.append(
            f"| inference b{r['batch']} {r['size'][0]}x{r['size'][1]} | {r['variant']} | "
            f"{r['latency_ms']['median']:.2f} ms | {r['fps']:.0f} img/s | "
            f"x{r['speedup_over_eager']:.2f} eager, argmax = {100 * r['argmax_agreement']:.3f}% "
            f"{'| ' + choice if choice else ''} |"
        )
    return rows


def profile_rows(data: Any, part: str, top: int = 5) -> list[str]:
    """Where one profiled call (inference) or step (training) spends its device time: its largest
    ops, or why the profiler failed."""
    rows = []
    for r in (data or {}).get(part, []):
        ops = r.get("profile") or []
        listed = "; ".join(f"{op['op'][:48]} {100 * op['share']:.0f}%" for op in ops[:top])
        if r.get("profile_error"):
            listed = f"profiler failed: {r['profile_error'][:100]}"
        if listed:
            what = r.get("variant") or r.get("setting")
            rows.append(f"| profile {part} b{r['batch']} | {what} | {listed} | | |")
    return rows


def training_rows(data: Any) -> list[str]:
    return [
        f"| train step b{r['batch']} {r['crop'][0]}x{r['crop'][1]} | "
        f"{r['setting']}{' + compile' if r.get('compile') else ''} | "
        f"{r['step_ms']['median']:.1f} ms | {r['images_per_s']:.0f} img/s | "
        f"x{r['speedup_over_eager']:.2f} eager |"
        for r in (data or {}).get("training", [])
    ]


def train_check_rows(data: Any) -> list[str]:
    rows = []
    for name, r in (data or {}).items():
        gap = r.get("max_rel_gap_20step_mean_vs_eager")
        extra = []
        if gap is not None:
            tolerance = r.get("loss_tolerance", 0.05)
            verdict = "within" if gap <= tolerance else "OVER"
            extra.append(f"loss gap vs eager {100 * gap:.1f}% ({verdict} {100 * tolerance:g}%)")
        if "syncs_in_probed_steps" in r:
            extra.append(f"{r['syncs_in_probed_steps']} syncs in {r['sync_probe_steps']} steps")
        extra.append(f"stride warnings {r['grad_stride_warnings']}")
        extra.append(f"sync_dist warnings {r['sync_dist_warnings']}")
        status = "ok" if not r.get("error") else f"FAILED: {r['error'][:120]}"
        rows.append(
            f"| lightning {name} | {status} | {r.get('steps')} steps, {r['seconds']} s | "
            f"final loss {r.get('final_20step_mean', '-')} | {', '.join(extra)} |"
        )
    return rows


def data_rows(data: Any) -> list[str]:
    if not data:
        return []
    sources = {"PNG tree": data.get("dataloader_images_per_s", {})}
    if data.get("prepared"):
        sources["prepared"] = data["prepared"].get("dataloader_images_per_s", {})
    rows = []
    for source, rates in sources.items():
        verdict = data.get("fed", {}).get(source, {})
        fed = f"fed {data.get('gpu_rate')} img/s: {verdict.get('fed')}" if verdict else ""
        for workers, rate in rates.items():
            rows.append(
                f"| data {source}, augment on {data.get('augment_on')} | {workers} workers | "
                f"{rate:.0f} img/s | {rate / max(int(workers), 1):.1f} per worker | {fed} |"
            )
    return rows


def kernel_rows(log: str) -> list[str]:
    found = re.findall(r"=== kernels: exit (\d+)", log)
    section = log.split("=== kernels (")[-1]
    tally = re.findall(r"(\d+ (?:passed|failed)[^\n=]*)", section) if found else []
    if not found:
        return []
    return [f"| triton kernels (GPU) | exit {found[-1]} | {tally[-1] if tally else ''} | | |"]


def main() -> None:
    out = Path(sys.argv[1])
    log = (out / "gpu_checks.log").read_text() if (out / "gpu_checks.log").exists() else ""
    lines = ["| check | what | figure | rate | notes |", "|---|---|---|---|---|"]
    lines += inference_rows(load(out, "inference.json"))
    lines += inference_rows(load(out, "batched.json"))
    lines += training_rows(load(out, "training.json"))
    lines += training_rows(load(out, "training_compiled.json"))
    lines += train_check_rows(load(out, "train_checks.json"))
    lines += data_rows(load(out, "data.json"))
    lines += kernel_rows(log)
    lines += profile_rows(load(out, "inference.json"), "inference")
    lines += profile_rows(load(out, "training.json"), "training")
    lines += [
        f"| step {m[0]} | exit {m[1]} | | | |" for m in re.findall(r"=== (\w+): exit (\d+)", log)
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
