"""PNG plots of a serving bench run, from the raw JSON that bench/serve_bench.py writes.

Runs in the bench's plotting virtualenv (matplotlib, numpy; no raysight), and prints the
path of each PNG it writes:

    runs/bench/venvs/plots/bin/python bench/plots.py runs/bench/serve-bench-STAMP.json \\
        --out docs/plots
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib import ticker

_COLUMNS = 3
# Log axes labelled 300 and 1,000 rather than 3x10^2 and 10^3.
_PLAIN = ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")


def _colours(data: dict[str, Any]) -> dict[str, str]:
    """One colour per server, the same in every plot."""
    return {server: f"C{i % 10}" for i, server in enumerate(data["servers"])}


def _grid(panels: int) -> tuple[Any, list[Any]]:
    columns = min(_COLUMNS, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False, layout="constrained"
    )
    return figure, list(axes.flat)


def throughput_vs_p99(data: dict[str, Any], out: Path) -> Path:
    """One panel per workload: each server a line through its concurrencies, requests/s
    against p99 latency (both log scales)."""
    cells = data["summary"]["cells"]
    workloads = [w for w in data["workloads"] if any(c["workload"] == w for c in cells)]
    colours = _colours(data)
    figure, axes = _grid(len(workloads))
    for axis, workload in zip(axes, workloads, strict=False):
        for server in data["servers"]:
            points = sorted(
                (c["concurrency"], c["requests_per_s"], c["p99_ms"])
                for c in cells
                if c["server"] == server and c["workload"] == workload
                if c["requests_per_s"] > 0 and not math.isnan(c["p99_ms"])
            )
            if not points:
                continue
            rates, p99s = [p[1] for p in points], [p[2] for p in points]
            line = axis.plot(rates, p99s, marker="o", label=server, color=colours[server])
            for concurrency, rate, p99 in points:
                axis.annotate(
                    str(concurrency),
                    (rate, p99),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                    color=line[0].get_color(),
                )
        axis.set_xscale("log")
        axis.set_yscale("log")
        for scale in (axis.xaxis, axis.yaxis):  # after set_*scale, which resets them
            scale.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            scale.set_major_formatter(_PLAIN)
            scale.set_minor_formatter(ticker.NullFormatter())
        axis.set_title(workload)
        axis.set_xlabel("requests/s")
        axis.set_ylabel("p99 latency (ms)")
        axis.grid(True, which="both", alpha=0.3)
    for axis in axes[len(workloads) :]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8))
    figure.suptitle("Throughput against p99 latency (numbers: concurrent callers)")
    path = out / "serving-throughput-p99.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def ratios(data: dict[str, Any], out: Path) -> Path | None:
    """One row per workload, bars by concurrency: each server's requests/s over the best
    peer's (left) and over the bare server's (right). None when there is nothing to
    compare."""
    cells = {(c["server"], c["workload"], c["concurrency"]): c for c in data["summary"]["cells"]}
    peers = set(data["peers"])
    measured = {server for server, _, _ in cells}
    others = [s for s in data["servers"] if s in measured and s != "bare"]
    workloads = [w for w in data["workloads"] if any(k[1] == w for k in cells)]
    if not others or not workloads:
        return None
    concurrencies = data["concurrency"]

    def rate(server: str, workload: str, concurrency: int) -> float:
        cell = cells.get((server, workload, concurrency))
        return cell["requests_per_s"] if cell else math.nan

    def best_peer(workload: str, concurrency: int) -> float:
        rates = [r for r in (rate(p, workload, concurrency) for p in peers) if not math.isnan(r)]
        return max(rates) if rates else math.nan

    bases = {"best peer": best_peer, "bare": lambda w, c: rate("bare", w, c)}
    figure, axes = plt.subplots(
        len(workloads),
        len(bases),
        figsize=(5.5 * len(bases), 2.6 * len(workloads)),
        squeeze=False,
        layout="constrained",
    )
    colours = _colours(data)
    width = 0.8 / len(others)
    for row, workload in enumerate(workloads):
        for column, (base_name, base) in enumerate(bases.items()):
            axis = axes[row][column]
            drawn = False
            for i, server in enumerate(others):
                values = [rate(server, workload, c) / base(workload, c) for c in concurrencies]
                offset = (i - (len(others) - 1) / 2) * width
                positions = [x + offset for x in range(len(concurrencies))]
                axis.bar(positions, values, width, label=server, color=colours[server])
                drawn = drawn or any(not math.isnan(v) for v in values)
            if not drawn:
                axis.text(0.5, 0.5, "nothing to compare", ha="center", transform=axis.transAxes)
                axis.set_ylim(0, 1.2)
            axis.axhline(1.0, color="black", linewidth=0.8)
            axis.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
            axis.set_title(f"{workload}: requests/s / {base_name}", fontsize=9)
            axis.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    figure.suptitle("Requests/s relative to the best peer and to the bare server (1.0: equal)")
    path = out / "serving-ratios.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="serve-bench-*.json")
    parser.add_argument("--out", default="docs/plots")
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not data["summary"]["cells"]:
        return 0  # nothing measured over a transport: nothing to draw
    for path in (throughput_vs_p99(data, out), ratios(data, out)):
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
