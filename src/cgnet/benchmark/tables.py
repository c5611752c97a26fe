"""The benchmark's figures as rich tables for the terminal and as Markdown for docs/benchmarks.md.

Both read only the JSON-able result of :func:`cgnet.benchmark.run`, so a saved ``benchmark.json``
renders the same tables later.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _outcome_cells(row: dict[str, Any]) -> list[str]:
    """Throughput, memory and agreement cells, shared by the terminal and the Markdown tables."""
    return [
        f"{row['fps']:.2f}",
        f"{row['speedup_over_eager']:.2f}",
        f"{row['page_faults_per_call']:,}",
        _fmt(row["peak_memory_mib"], ".0f"),
        _fmt(row["process_peak_mib"], ".0f"),
        f"{row['max_abs_diff']:.1e}",
        f"{row['argmax_agreement']:.4%}",
    ]


def render(result: dict[str, Any]) -> list[Table]:
    """Rich tables: one for inference (all sizes), one for training throughput."""
    model = result["model"]
    cuda = result["device"].startswith("cuda")
    title = (
        f"CGNet M={model['M']} N={model['N']}, {model['num_classes']} classes, "
        f"{model['parameters']:,} parameters ({model['source']}) on {result['device']}"
    )
    table = Table(title=title)
    for column in ("size", "variant", "GMACs", "median ms", "q1-q3 ms", "min-max ms"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    if cuda:
        table.add_column("no-sync ms", justify="right")
    columns = (
        "fps",
        "x eager",
        "faults",
        "call MiB",
        "process MiB",
        "max |diff|",
        "argmax =",
        "1st call s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["inference"]:
        key = f"{row['size'][0]}x{row['size'][1]}"
        if "skipped" in row:
            table.add_row(key, f"{row['variant']} (skipped: {row['skipped'][:70]})")
            continue
        lat = row["latency_ms"]
        cells = [
            key,
            row["variant"],
            f"{model['multiply_adds'][key] / 1e9:.2f}",
            f"{lat['median']:.1f}",
            f"{lat['q1']:.1f}-{lat['q3']:.1f}",
            f"{lat['min']:.1f}-{lat['max']:.1f}",
        ]
        if cuda:
            unsynced = row.get("latency_unsynced_ms") or {}
            cells.append(_fmt(unsynced.get("median"), ".1f"))
        cells += [*_outcome_cells(row), f"{row['first_call_s']:.1f}"]
        table.add_row(*cells)
    tables = [table]
    for row in result["inference"]:
        if row.get("profile"):
            size = f"{row['size'][0]}x{row['size'][1]}"
            title = f"where {row['variant']} spends one call at {size} (self time)"
            tables.append(_profile_table(title, row["profile"]))
    if result.get("training"):
        train = Table(title="training throughput (normalise + forward + CE + backward + Adam)")
        for column in ("setting", *TRAIN_SWITCHES, "batch x crop"):
            train.add_column(column)
        train.add_column("ms/step", justify="right")
        train.add_column("images/s", justify="right")
        train.add_column("x eager", justify="right")
        for row in result["training"]:
            train.add_row(
                row["setting"],
                *_switches(row),
                f"{row['batch']} x {row['crop'][0]}x{row['crop'][1]}",
                f"{row['step_ms']['median']:.0f}",
                f"{row['images_per_s']:.2f}",
                f"{row['speedup_over_eager']:.2f}",
            )
        tables.append(train)
        for row in result["training"]:
            if row.get("profile"):
                title = f"where the {row['setting']} step spends its time (self time)"
                tables.append(_profile_table(title, row["profile"]))
    return tables


TRAIN_SWITCHES = (
    "channels_last",
    "space_to_batch",
    "cpu_prelu",
    "compile",
    "reuse_memory",
    "bf16",
    "fused_context",
)
"""The training-step settings each table shows, in column order (absent in a row: False)."""


def _switches(row: dict[str, Any]) -> list[str]:
    return [str(row.get(key, False)) for key in TRAIN_SWITCHES]


def _profile_table(title: str, ops: list[dict[str, Any]]) -> Table:
    prof = Table(title=title)
    for column in ("op", "ms", "share", "calls"):
        prof.add_column(column, justify="left" if column == "op" else "right")
    for op in ops:
        prof.add_row(op["op"][:70], f"{op['ms']:.1f}", f"{op['share']:.1%}", str(op["calls"]))
    return prof


def render_markdown(result: dict[str, Any]) -> str:
    """The figures as Markdown tables, with the command, machine and date, for docs/benchmarks.md."""
    machine_info = result["machine"]
    lines = [
        f"`{result['command']}`",
        "",
        f"{result['date']}; {machine_info.get('cpu', '?')}, {machine_info['threads']} threads, "
        f"torch {machine_info['torch']}, onnxruntime {machine_info.get('onnxruntime', '-')}; "
        f"{result['model']['source']}; each variant in its own process: "
        f"{result['isolated_processes']}.",
        "",
    ]
    cuda = result["device"].startswith("cuda")
    head = "| size | variant | median ms | q1-q3 ms | min ms |"
    head += " no-sync ms |" if cuda else ""
    head += " fps | x eager | faults/call | call MiB | process MiB | max abs diff | argmax agree |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for row in result["inference"]:
        size = f"{row['size'][0]}x{row['size'][1]}"
        if "skipped" in row:
            lines.append(f"| {size} | {row['variant']} (skipped: {row['skipped']}) |")
            continue
        lat = row["latency_ms"]
        cells = [size, row["variant"], f"{lat['median']:.0f}", f"{lat['q1']:.0f}-{lat['q3']:.0f}"]
        cells.append(f"{lat['min']:.0f}")
        if cuda:
            cells.append(_fmt((row.get("latency_unsynced_ms") or {}).get("median"), ".1f"))
        cells += _outcome_cells(row)
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("training"):
        lines += [
            "",
            "| training setting | " + " | ".join(TRAIN_SWITCHES) + " | batch x crop | ms/step"
            " | q1-q3 ms | images/s | x eager |",
            "|---|" + "---|" * (len(TRAIN_SWITCHES) + 5),
        ]
        for row in result["training"]:
            lines.append(
                f"| {row['setting']} | " + " | ".join(_switches(row)) + " | "
                f"{row['batch']} x {row['crop'][0]}x{row['crop'][1]} | "
                f"{row['step_ms']['median']:.0f} | "
                f"{row['step_ms']['q1']:.0f}-{row['step_ms']['q3']:.0f} | "
                f"{row['images_per_s']:.2f} | "
                f"{row['speedup_over_eager']:.2f} |"
            )
    return "\n".join(lines) + "\n"


__all__ = ["render", "render_markdown"]
