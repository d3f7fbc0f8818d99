"""PNG charts from the JSON the other benchmarks wrote in benchmarks/results/.

    .venv/bin/python benchmarks/plot.py      (needs matplotlib: pip install -e '.[bench]')

- throughput.png: docs/s against batch size, end to end and raw, per size, with the naive rate;
- latency.png: commit → searchable p50 / p95 / p99 / max against the app's commit rate.
A chart whose JSON is missing is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        print(f"skipped {name}: no {path.name}")
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _save(fig: Any, ax: Any, name: str) -> Path:
    """Grid, legend, layout, then results/NAME.png."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def throughput(data: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    naive = []
    for i, (rows, size) in enumerate(data["sizes"].items()):
        summary = size["summary"]
        batches = [int(b) for b in summary["e2e"]]
        color = f"C{i}"
        ax.plot(batches, [summary["raw"][str(b)] for b in batches], "--o", color=color,
                label=f"raw import, {int(rows):,} docs")
        ax.plot(batches, [summary["e2e"][str(b)]["docs_per_s"] for b in batches], "-s",
                color=color, label=f"end to end (cdc-daemon), {int(rows):,} rows")
        naive.append(summary["naive_docs_per_s"])
    if naive:
        ax.axhline(sum(naive) / len(naive), color="grey", linestyle=":",
                   label="one request per row")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (documents per import)")
    ax.set_ylabel("documents / s")
    ax.set_title("Throughput: app commit → searchable, vs raw Typesense import")
    return _save(fig, ax, "throughput")


def latency(data: dict[str, Any]) -> Path:
    rates = sorted(data["rates"], key=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_ms", "-o"), ("p95_ms", "-s"), ("p99_ms", "-^"), ("max_ms", ":x")):
        ax.plot([float(r) for r in rates], [data["rates"][r]["summary"][key] for r in rates],
                style, label=key.removesuffix("_ms"))
    ax.axhline(100, color="red", linestyle="--", alpha=0.5, label="target p99 at 200/s")
    ax.set_xscale("log")
    ax.set_xlabel("app commits / s (one row each)")
    ax.set_ylabel("commit → searchable (ms)")
    ax.set_title("Latency vs write rate")
    return _save(fig, ax, "latency")


def main() -> None:
    for name, draw in (("throughput", throughput), ("latency", latency)):
        data = load(name)
        if data is not None:
            print(f"wrote {draw(data).relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
