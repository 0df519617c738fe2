"""The batching policy under offered load: a latency target against fixed settings.

Each policy is `raysight serve` with its own serving flags, on a fresh local cluster. The
bench first measures the default's capacity (closed loop, `--capacity-concurrency`
callers), then offers open-loop Poisson load (bench/openloop.py) at fractions of it, from
light to well past saturation, to every policy. Rounds are interleaved (the policies'
order rotates) and each cell reports medians over the rounds: goodput (OK answers/s),
p50/p99 of OK answers from their scheduled times, and refused requests.

    python bench/batch_policy.py --checkpoint runs/pets-resnet9 --target-ms 100 \\
        --out docs/benchmarks.md --plots docs/plots
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import loadgen
import openloop
import report
import venvs
from servers import Context, context, raysight_serve

REPO = Path(__file__).resolve().parents[1]
SECTION = "batch_policy"


def policies(target_ms: float, small_batch: int) -> dict[str, list[str]]:
    """Name -> `raysight serve` flags."""
    return {
        "fixed-32": [],  # the default: up to 32 images a pass, no target
        f"fixed-{small_batch}": ["--max-batch-size", str(small_batch)],
        "target": ["--latency-target-s", f"{target_ms / 1000:g}"],
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--workload", default="oip-uint8-1", choices=list(loadgen.WORKLOADS))
    parser.add_argument("--target-ms", type=float, default=100.0)
    parser.add_argument("--small-batch", type=int, default=4, help="the small fixed cap")
    parser.add_argument("--policies", help="comma-separated subset of the policies to run")
    parser.add_argument("--fractions", default="0.25,0.5,0.75,0.9,1.25,2")
    parser.add_argument("--capacity-concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default="runs/bench")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--plots", default="docs/plots")
    return parser.parse_args()


def capacity(ctx: Context, args: argparse.Namespace, workload: loadgen.Workload) -> float:
    """Closed-loop requests/s of the default policy: what the offered rates are fractions of."""
    with raysight_serve.start(ctx, "policy-capacity", None) as server:
        cell = asyncio.run(
            loadgen.run_cell(
                server.target,
                workload,
                concurrency=args.capacity_concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
        )
    print(f"capacity: {cell.requests_per_s:.1f} req/s (p99 {cell.p99_ms:.1f} ms)", flush=True)
    return cell.requests_per_s


def measure(
    ctx: Context, args: argparse.Namespace, workload: loadgen.Workload, rates: list[float]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    named = policies(args.target_ms, args.small_batch)
    if args.policies:
        named = {name: named[name] for name in args.policies.split(",")}
    cells: list[dict[str, Any]] = []
    commands: dict[str, str] = {}
    names = list(named)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            with raysight_serve.start(ctx, f"policy-{name}", None, named[name]) as server:
                commands[name] = server.command
                for rate in rates:
                    cell = asyncio.run(
                        openloop.run_open_cell(
                            server.target,
                            workload,
                            rate=rate,
                            duration_s=args.duration,
                            warmup_s=args.warmup,
                            timeout_s=args.timeout,
                            seed=round_,
                        )
                    )
                    refused = sum(cell.errors.values())
                    print(
                        f"round {round_ + 1} {name} offered {rate:.0f}/s: "
                        f"{cell.requests_per_s:.1f} OK/s, p50 {cell.p50_ms:.1f} ms, "
                        f"p99 {cell.p99_ms:.1f} ms, non-OK {dict(cell.errors) or 0}",
                        flush=True,
                    )
                    cells.append(
                        {"policy": name, "round": round_, "refused": refused, **cell.to_dict()}
                    )
    return cells, commands


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds per (policy, offered rate)."""
    keys = sorted({(c["policy"], c["offered_per_s"]) for c in cells}, key=lambda k: k[1])
    rows = []
    for policy, rate in keys:
        mine = [c for c in cells if c["policy"] == policy and c["offered_per_s"] == rate]
        offered = rate * mine[0]["seconds"]
        rows.append(
            {
                "policy": policy,
                "offered_per_s": rate,
                "arrived_per_s": report.median(c["arrived"] / c["seconds"] for c in mine),
                "requests_per_s": report.median(c["requests_per_s"] for c in mine),
                "p50_ms": report.median(c["p50_ms"] for c in mine),
                "p99_ms": report.median(c["p99_ms"] for c in mine),
                "refused_share": report.median(c["refused"] / offered for c in mine),
                "codes": sorted({code for c in mine for code in c["errors"]}),
            }
        )
    return rows


def render(
    args: argparse.Namespace,
    *,
    facts: dict[str, str],
    cap: float,
    rows: list[dict[str, Any]],
    commands: dict[str, str],
    plots: list[Path],
    command: str,
) -> str:
    names = list(policies(args.target_ms, args.small_batch))
    rates = sorted({r["offered_per_s"] for r in rows})
    by = {(r["policy"], r["offered_per_s"]): r for r in rows}
    header = [
        "offered req/s (arrived)",
        *(f"`{n}`: OK/s, p99 ms, refused" for n in names),
    ]
    table_rows = []
    for rate in rates:
        arrived = report.median(r["arrived_per_s"] for r in rows if r["offered_per_s"] == rate)
        line = [f"{report.number(rate)} ({report.number(arrived)})"]
        for name in names:
            r = by.get((name, rate))
            line.append(
                "-"
                if r is None
                else f"{report.number(r['requests_per_s'])}, "
                f"{report.milliseconds(r['p99_ms'])}, {r['refused_share']:.0%}"
            )
        table_rows.append(line)
    codes = sorted({code for r in rows for code in r["codes"]})
    lines = [
        "## Serving: the batching policy under offered load",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Workload `{args.workload}` (one request, one image), open loop: Poisson arrivals "
        f"at fractions {args.fractions} of the default's closed-loop capacity, "
        f"{cap:,.0f} req/s at {args.capacity_concurrency} callers. Each cell "
        f"{args.warmup:g} s of warm-up, then {args.duration:g} s of arrivals, answers waited "
        f"for up to a {args.timeout:g} s deadline; latency counts from each request's "
        f"scheduled time; medians over {args.rounds} interleaved rounds, each policy on a "
        f"fresh `raysight serve`. The target is {args.target_ms:g} ms.",
        "",
        report.facts_table(facts),
        "",
        report.table(header, table_rows),
        "",
        "Refused: the share of offered requests answered with a non-OK status "
        f"({', '.join(codes) or 'none'}).",
        "",
        *(f"![{p.stem}](plots/{p.name})\n" for p in plots),
        "How each policy was started:",
        "",
        *(f"- `{name}`: `{cmd}`" for name, cmd in commands.items()),
    ]
    return "\n".join(lines)


def draw(ctx: Context, raw: Path, out: str) -> list[Path]:
    try:
        env = venvs.ensure(ctx.work_dir, ctx.repo, "plots", engine=False)
    except venvs.InstallError as exc:
        print(f"no plots: matplotlib cannot be installed: {exc}")
        return []
    script = Path(__file__).with_name("policy_plots.py")
    done = subprocess.run(
        [str(env.python), str(script), str(raw), "--out", out],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"no plots: {done.stderr.strip()[-500:]}")
        return []
    return [Path(line) for line in done.stdout.split()]


def main() -> int:
    args = _arguments()
    checkpoint = Path(args.checkpoint).resolve()
    if not (checkpoint / "manifest.json").exists():
        print(f"no checkpoint at {checkpoint}")
        return 2
    command = report.command_line()
    model = loadgen.ModelFacts.from_checkpoint(checkpoint)
    ctx = context(REPO, checkpoint, Path(args.work_dir).resolve(), threads=1, device=args.device)
    facts = report.machine_facts(REPO)
    workload = loadgen.build_workload(args.workload, model)
    cap = capacity(ctx, args, workload)
    rates = [round(cap * float(f), 1) for f in args.fractions.split(",")]
    cells, commands = measure(ctx, args, workload, rates)
    rows = summarise(cells)
    raw = ctx.work_dir / f"batch-policy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "command": command,
                "facts": facts,
                "capacity": cap,
                "target_ms": args.target_ms,
                "policies": list(policies(args.target_ms, args.small_batch)),
                "cells": cells,
                "rows": rows,
            },
            indent=1,
        )
    )
    plots = draw(ctx, raw, args.plots)
    section = render(
        args, facts=facts, cap=cap, rows=rows, commands=commands, plots=plots, command=command
    )
    report.write_section(Path(args.out), SECTION, section, "bench/batch_policy.py")
    print(f"wrote {args.out}; raw numbers {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
