"""PNG plot of a batching-policy run (bench/batch_policy.py's raw JSON): goodput and p99
against offered load, one line per policy. Runs in the bench's plotting virtualenv.

    runs/bench/venvs/plots/bin/python bench/policy_plots.py runs/bench/batch-policy-STAMP.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="batch-policy-*.json")
    parser.add_argument("--out", default="docs/plots")
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    figure, (goodput, tail) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for i, policy in enumerate(data["policies"]):
        rows = sorted(
            (r for r in data["rows"] if r["policy"] == policy), key=lambda r: r["offered_per_s"]
        )
        offered = [r["offered_per_s"] for r in rows]
        goodput.plot(offered, [r["requests_per_s"] for r in rows], "o-", color=f"C{i}")
        p99 = [r["p99_ms"] if not math.isnan(r["p99_ms"]) else None for r in rows]
        tail.plot(offered, p99, "o-", color=f"C{i}", label=policy)
    top = max(r["offered_per_s"] for r in data["rows"])
    goodput.plot([0, top], [0, top], ":", color="grey", label="offered")
    goodput.axhline(data["capacity"], ls="--", color="grey", lw=0.8)
    goodput.set(xlabel="offered requests/s", ylabel="OK answers/s", title="goodput")
    tail.axhline(data["target_ms"], ls="--", color="black", lw=0.8, label="target")
    tail.set(xlabel="offered requests/s", ylabel="p99 ms (log)", title="p99 of OK answers")
    tail.set_yscale("log")
    for axis in (goodput, tail):
        axis.grid(True, alpha=0.3)
    figure.legend(*tail.get_legend_handles_labels(), loc="outside right center")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "batch-policy.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
