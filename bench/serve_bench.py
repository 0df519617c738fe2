"""Serving benchmark: raysight against the transport limit, the compute limit and its peers.

Every server serves the same checkpoint under the same model name and receives the same
request bytes from the same load generator (bench/loadgen.py), in one run. Rounds are
interleaved: in each round every server in turn is started, warmed up, driven through every
workload x concurrency cell, and stopped; the order of the servers rotates from round to
round, so drift in the machine's speed hits each alike. Tables give medians over the
rounds, ratios against the best peer and the bare server, and every non-OK status.

    python bench/serve_bench.py --checkpoint runs/digits [--rounds 3] [--duration 5] \\
        [--servers raysight,bare,...] [--workloads oip-fp32-1,...] \\
        [--out docs/benchmarks.md] [--plots docs/plots]

The Markdown goes into its own section of --out (the rest of the page is kept); the raw
numbers of every round go to --work-dir (runs/bench by default), beside the peers'
virtualenvs and the servers' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import loadgen
import report
import venvs
from servers import SERVERS, Context, Server, ServerError, context

REPO = Path(__file__).resolve().parents[1]
SECTION = "serve_bench"
PEERS = tuple(name for name, server in SERVERS.items() if server.kind == "peer")
PEER_PACKAGES = {"mlserver": "mlserver", "kserve": "kserve"}  # venv -> its package


@dataclass
class Run:
    """Everything one run measured or noticed, per round."""

    cells: list[dict[str, Any]] = field(default_factory=list)
    engine: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # server -> why it was not run
    failures: list[str] = field(default_factory=list)  # starts or probes that failed
    commands: dict[str, str] = field(default_factory=dict)  # server -> how it was started
    versions: dict[str, str] = field(default_factory=dict)  # peer package -> version


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/digits", help="checkpoint directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated callers")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--workloads", default=",".join(loadgen.WORKLOADS), help="comma-separated")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels per cell")
    parser.add_argument("--stream-depth", type=int, default=4, help="requests in flight per stream")
    parser.add_argument(
        "--engine-batches", default="1,8,32", help="batch sizes of the engine-alone measure"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of bare+engine, engine and peers"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--work-dir", default="runs/bench", help="venvs, logs, raw results")
    parser.add_argument("--out", default="docs/benchmarks.md", help="Markdown page to write")
    parser.add_argument("--plots", default="docs/plots", help="directory of the PNG plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--title", default="Serving: raysight, its limits and its peers")
    parser.add_argument("--section", default=SECTION, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.servers = [s for s in args.servers.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.engine_batches = [int(b) for b in args.engine_batches.split(",")]
    for name in args.servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    for name in args.workloads:
        if name not in loadgen.WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(loadgen.WORKLOADS)}")
    return args


class Bench:
    """One run: every round, every server in turn (rotating), every workload x concurrency."""

    def __init__(self, args: argparse.Namespace, ctx: Context) -> None:
        self.args = args
        self.ctx = ctx
        model = loadgen.ModelFacts.from_checkpoint(ctx.checkpoint)
        self.workloads = {
            name: loadgen.build_workload(name, model, stream_depth=args.stream_depth)
            for name in args.workloads
        }
        self.run = Run()

    def measure(self) -> Run:
        servers = [SERVERS[name] for name in self.args.servers]
        self._prepare_peers(servers)
        servers = [s for s in servers if s.name not in self.run.unavailable]
        rounds = self.args.rounds
        for round_ in range(1, rounds + 1):
            shift = (round_ - 1) % len(servers) if servers else 0
            for server in servers[shift:] + servers[:shift]:
                print(f"round {round_}/{rounds}: {server.name}", flush=True)
                if server.start is None:
                    self._measure_engine(round_)
                else:
                    self._measure_server(server, round_)
        return self.run

    def _prepare_peers(self, servers: list[Server]) -> None:
        """Install each peer's virtualenv once; a peer that cannot be installed is left
        out, with the reason in the output."""
        failed: dict[str, str] = {}
        for server in servers:
            if server.venv is None:
                continue
            if server.venv not in failed:
                try:
                    env = venvs.ensure(self.ctx.work_dir, self.ctx.repo, server.venv)
                    package = PEER_PACKAGES[server.venv]
                    self.run.versions[package] = venvs.version(env, package)
                except venvs.InstallError as exc:
                    failed[server.venv] = str(exc)
            if server.venv in failed:
                self.run.unavailable[server.name] = f"not installed: {failed[server.venv]}"
                print(f"{server.name}: cannot be installed, left out: {failed[server.venv]}")

    def _measure_server(self, server: Server, round_: int) -> None:
        assert server.start is not None
        try:
            with server.start(self.ctx) as running:
                self.run.commands[server.name] = running.command
                for name, workload in self.workloads.items():
                    if server.serves(name):
                        self._measure_workload(server, running.target, workload, round_)
        except ServerError as exc:
            self.run.failures.append(f"round {round_}, {server.name}: did not start: {exc}")
            print(f"  did not start: {exc}", flush=True)

    def _measure_workload(
        self, server: Server, target: str, workload: loadgen.Workload, round_: int
    ) -> None:
        """A probe request, then one cell per concurrency."""
        where = f"round {round_}, {server.name}, {workload.name}"
        reply = server.stream_reply
        problem = asyncio.run(loadgen.probe(target, workload, stream_reply=reply))
        if problem is not None:
            self.run.failures.append(f"{where}: the probe failed, cells skipped: {problem}")
            print(f"  {workload.name}: the probe failed ({problem}); cells skipped")
            return
        for concurrency in self.args.concurrency:
            try:
                result = asyncio.run(
                    loadgen.run_cell(
                        target,
                        workload,
                        concurrency=concurrency,
                        channels=self.args.channels,
                        duration_s=self.args.duration,
                        warmup_s=self.args.warmup,
                        stream_reply=reply,
                    )
                )
            except (TimeoutError, grpc.RpcError, OSError) as exc:  # e.g. the server died
                self.run.failures.append(f"{where}, c={concurrency}: {exc!r}")
                print(f"  {workload.name} c={concurrency}: failed: {exc!r}", flush=True)
                continue
            self.run.cells.append({"server": server.name, "round": round_, **result.to_dict()})
            print(
                f"  {workload.name:15s} c={concurrency:<4d} {result.requests_per_s:9.1f} req/s  "
                f"p50 {report.milliseconds(result.p50_ms):>6s} ms  "
                f"p99 {report.milliseconds(result.p99_ms):>6s} ms  "
                f"non-OK {sum(result.errors.values())}  client CPU {result.client_cpu:.2f}",
                flush=True,
            )

    def _measure_engine(self, round_: int) -> None:
        argv = [
            sys.executable,
            str(Path(__file__).with_name("servers") / "engine.py"),
            "--checkpoint",
            str(self.ctx.checkpoint),
            "--batches",
            ",".join(map(str, self.args.engine_batches)),
            "--duration",
            str(self.args.duration),
            "--device",
            self.ctx.device,
            "--threads",
            str(self.ctx.threads),
        ]
        self.run.commands["engine"] = shlex.join(argv)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            self.run.failures.append(
                f"round {round_}, engine: exited {done.returncode}: {done.stderr[-500:]}"
            )
            return
        for line in done.stdout.splitlines():
            row = json.loads(line)
            self.run.engine.append({"round": round_, **row})
            print(
                f"  {row['path']:13s} batch {row['batch']:<4d} "
                f"{row['images_per_s']:10.1f} images/s",
                flush=True,
            )


# ---- summary ---------------------------------------------------------------------------


def summarise(run: Run) -> dict[str, Any]:
    """Medians over rounds per (server, workload, concurrency), non-OK counts summed."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for cell in run.cells:
        groups[(cell["server"], cell["workload"], cell["concurrency"])].append(cell)
    cells = []
    for (server, workload, concurrency), rounds in groups.items():
        errors: Counter[str] = Counter()
        for cell in rounds:
            errors.update(cell["errors"])
        cells.append(
            {
                "server": server,
                "workload": workload,
                "concurrency": concurrency,
                "rounds": len(rounds),
                "requests_per_s": report.median(c["requests_per_s"] for c in rounds),
                "images_per_s": report.median(c["images_per_s"] for c in rounds),
                "p50_ms": report.median(c["p50_ms"] for c in rounds),
                "p90_ms": report.median(c["p90_ms"] for c in rounds),
                "p99_ms": report.median(c["p99_ms"] for c in rounds),
                "client_cpu": report.median(c["client_cpu"] for c in rounds),
                "per_round_requests_per_s": [c["requests_per_s"] for c in rounds],
                "errors": dict(errors),
            }
        )
    engine_groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in run.engine:
        engine_groups[(row["path"], row["batch"])].append(row)
    engine = [
        {
            "path": path,
            "batch": batch,
            "images_per_s": report.median(r["images_per_s"] for r in rows),
            "ms_per_batch": report.median(r["ms_per_batch"] for r in rows),
            "rounds": len(rows),
        }
        for (path, batch), rows in engine_groups.items()
    ]
    return {"cells": cells, "engine": engine}


def best_peers(summary: dict[str, Any]) -> dict[tuple[str, int], tuple[str, float]]:
    """(workload, concurrency) -> (the peer with the most requests/s, that rate)."""
    best: dict[tuple[str, int], tuple[str, float]] = {}
    for cell in summary["cells"]:
        if cell["server"] not in PEERS or math.isnan(cell["requests_per_s"]):
            continue
        key = (cell["workload"], cell["concurrency"])
        if key not in best or cell["requests_per_s"] > best[key][1]:
            best[key] = (cell["server"], cell["requests_per_s"])
    return best


def _lookup(summary: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(c["server"], c["workload"], c["concurrency"]): c for c in summary["cells"]}


# ---- Markdown --------------------------------------------------------------------------


@dataclass
class Page:
    """The bench's section of the Markdown page."""

    args: argparse.Namespace
    ctx: Context
    run: Run
    summary: dict[str, Any]
    facts: dict[str, str]
    command: str
    plots: list[Path]

    def __post_init__(self) -> None:
        self.cells = _lookup(self.summary)
        self.best = best_peers(self.summary)
        self.servers = [s for s in self.args.servers if s in SERVERS]
        # Those measured over gRPC, in the order asked for.
        self.transport = [
            s
            for s in self.servers
            if SERVERS[s].start is not None and s not in self.run.unavailable
        ]

    def render(self) -> str:
        parts = [
            self.header(),
            self.server_list(),
            self.throughput(),
            self.ratios(),
            self.latency(),
            self.engine(),
            self.statuses(),
            self.pictures(),
            self.commands(),
        ]
        return "\n\n".join(part.strip("\n") for part in parts if part) + "\n"

    def rate(self, server: str, workload: str, concurrency: int) -> float:
        cell = self.cells.get((server, workload, concurrency))
        return cell["requests_per_s"] if cell else math.nan

    def header(self) -> str:
        args, ctx = self.args, self.ctx
        manifest = json.loads((ctx.checkpoint / "manifest.json").read_text())
        shape = "x".join(map(str, manifest["input_shape"]))
        return "\n".join(
            [
                f"## {args.title}",
                "",
                "```bash",
                self.command,
                "```",
                "",
                f"{_plural(args.rounds, 'round')}, interleaved (the servers' order rotates "
                "each round); "
                f"each cell is {args.warmup:g} s of warm-up, then {args.duration:g} s measured; "
                f"medians over the rounds. Checkpoint `{manifest['model']}` trained on "
                f"`{manifest['dataset']}` (input {shape}, weights sha256 "
                f"{manifest['weights_sha256'][:12]}), served as `{ctx.model_name}` on "
                f"{ctx.device}. The load generator (`bench/loadgen.py`: grpc.aio, closed loop, "
                f"requests serialised once per workload, so every server gets the same bytes) "
                f"runs on the same machine over {args.channels} channels. bare+engine, engine "
                f"and the peers run torch with {_plural(args.threads, 'thread')}; each of "
                "raysight's replicas (one per core) has 1 CPU, so Ray gives it 1 thread. The "
                "peers do not batch; raysight and bare+engine batch with raysight's batcher: up "
                "to 32 images a pass, gathered towards 6 while requests keep arriving.",
                "",
                report.facts_table({**self.facts, **self.run.versions}),
            ]
        )

    def server_list(self) -> str:
        rows = [
            [
                f"`{s}`",
                SERVERS[s].description,
                self.run.unavailable.get(s, "measured").replace("|", "/"),
            ]
            for s in self.servers
        ]
        workloads = [
            "`oip-fp32-N`: ModelInfer with N normalised FP32 images in raw_input_contents",
            "`oip-uint8-N`: the same with raw UINT8 pixels",
            f"`stream-uint8-1`: ModelStreamInfer, one stream per caller, "
            f"{self.args.stream_depth} requests in flight on each, answers matched by id "
            "(MLServer's, which all carry the stream's first id, by order)",
            "`classify-png`: the image API's Classify with a PNG file",
        ]
        return "\n".join(
            [
                "### Servers",
                "",
                report.table(["server", "what", "status"], rows),
                "",
                "Workloads: " + "; ".join(workloads) + ". The peers implement neither the "
                "image API nor (KServe) ModelStreamInfer: those cells are left out.",
            ]
        )

    def throughput(self) -> str:
        args = self.args
        out = ["### Throughput (requests/s)"]
        for workload in args.workloads:
            rows = [
                [f"`{server}`"]
                + [report.number(self.rate(server, workload, c)) for c in args.concurrency]
                for server in self.transport
                if SERVERS[server].serves(workload)
            ]
            images = loadgen.WORKLOADS[workload][2]
            out += [
                "",
                f"**{workload}** ({images} image{'s' if images > 1 else ''} per request)",
                "",
                report.table(["server", *(f"c={c}" for c in args.concurrency)], rows),
            ]
        return "\n".join(out)

    def ratios(self) -> str:
        """Two tables, rows workload x concurrency: every server over the best peer, and
        over the bare server."""
        others = [s for s in self.transport if s != "bare"]
        if not others:
            return ""
        best_rows, bare_rows = [], []
        for workload in self.args.workloads:
            for c in self.args.concurrency:
                peer, peer_rate = self.best.get((workload, c), ("-", math.nan))
                bare = self.rate("bare", workload, c)
                rates = [self.rate(server, workload, c) for server in others]
                best_rows.append(
                    [workload, c, f"{peer} ({report.number(peer_rate)})" if peer != "-" else "-"]
                    + [report.ratio(rate, peer_rate) for rate in rates]
                )
                bare_rows.append(
                    [workload, c, report.number(bare)]
                    + [report.ratio(rate, bare) for rate in rates]
                )
        names = [f"`{s}`" for s in others]
        return "\n".join(
            [
                "### Ratios",
                "",
                "Requests/s of each server over the best peer's at the same workload and "
                "concurrency:",
                "",
                report.table(["workload", "c", "best peer (req/s)", *names], best_rows),
                "",
                "and over the bare server's, the transport limit:",
                "",
                report.table(["workload", "c", "bare (req/s)", *names], bare_rows),
            ]
        )

    def latency(self) -> str:
        rows = []
        for workload in self.args.workloads:
            for server in self.transport:
                for c in self.args.concurrency:
                    cell = self.cells.get((server, workload, c))
                    if cell is not None:
                        rows.append(_latency_row(workload, server, c, cell))
        header = [
            "workload",
            "server",
            "c",
            "req/s",
            "images/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "non-OK",
            "client CPU",
            "req/s by round",
        ]
        return "\n".join(
            [
                "### Latency and images/s",
                "",
                report.table(header, rows),
                "",
                "Client CPU: the load generator's CPU seconds per second of the cell; near 1.0 "
                "the client, not the server, sets the pace.",
            ]
        )

    def engine(self) -> str:
        if not self.summary["engine"]:
            return ""
        rows = [
            [
                row["path"],
                row["batch"],
                report.number(row["images_per_s"]),
                report.milliseconds(row["ms_per_batch"]),
            ]
            for row in sorted(self.summary["engine"], key=lambda r: (r["path"], r["batch"]))
        ]
        return "\n".join(
            [
                "### The engine alone (compute limit)",
                "",
                "`ServedModel.run` (normalised FP32 in, logits and probabilities out, as the "
                "replica runs it) and `Engine.classify_pixels` (raw UINT8) in one process, no "
                f"transport, {_plural(self.args.threads, 'torch thread')}, "
                f"{self.args.duration:g} s per measurement.",
                "",
                report.table(["path", "batch", "images/s", "ms per batch"], rows),
            ]
        )

    def statuses(self) -> str:
        counted = [
            [f"`{c['server']}`", c["workload"], c["concurrency"], code, count]
            for c in sorted(
                self.summary["cells"], key=lambda c: (c["server"], c["workload"], c["concurrency"])
            )
            for code, count in sorted(c["errors"].items())
        ]
        out = ["### Non-OK statuses", ""]
        if counted:
            out.append(report.table(["server", "workload", "c", "status", "count"], counted))
        else:
            out.append("None: every measured request was answered OK.")
        if self.run.failures:
            out += ["", "Failures outside the measured cells:", ""]
            out += [f"- {line.splitlines()[0]}" for line in self.run.failures]
        return "\n".join(out)

    def pictures(self) -> str:
        if not self.plots:
            return ""
        page_dir = Path(self.args.out).resolve().parent
        out = ["### Plots"]
        for plot in self.plots:
            out += ["", f"![{plot.stem}]({os.path.relpath(plot.resolve(), page_dir)})"]
        return "\n".join(out)

    def commands(self) -> str:
        lines = [
            f"- `{name}`: `{command.replace(f'{REPO}/', '')}`"
            for name, command in self.run.commands.items()
        ]
        return "\n".join(["### How each server was started", "", *lines])


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _latency_row(workload: str, server: str, concurrency: int, cell: dict[str, Any]) -> list[Any]:
    return [
        workload,
        f"`{server}`",
        concurrency,
        report.number(cell["requests_per_s"], 1),
        report.number(cell["images_per_s"], 1),
        report.milliseconds(cell["p50_ms"]),
        report.milliseconds(cell["p90_ms"]),
        report.milliseconds(cell["p99_ms"]),
        sum(cell["errors"].values()),
        f"{cell['client_cpu']:.2f}",
        ", ".join(f"{r:,.0f}" for r in cell["per_round_requests_per_s"]),
    ]


# ---- plots -------------------------------------------------------------------------------


def draw_plots(args: argparse.Namespace, ctx: Context, summary_path: Path) -> list[Path]:
    """PNG plots from the summary, drawn by bench/plots.py in the bench's plotting
    virtualenv (matplotlib is no dependency of raysight)."""
    try:
        env = venvs.ensure(ctx.work_dir, ctx.repo, "plots", engine=False)
    except venvs.InstallError as exc:
        print(f"no plots: matplotlib cannot be installed: {exc}")
        return []
    argv = [
        str(env.python),
        str(Path(__file__).with_name("plots.py")),
        str(summary_path),
        "--out",
        args.plots,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"no plots: {done.stderr.strip()[-500:]}")
        return []
    return [Path(line) for line in done.stdout.split()]


def main(
    argv: list[str] | None = None,
    *,
    command: str | None = None,
    writer: str = "bench/serve_bench.py",
) -> int:
    """Run the bench with `argv` (default: the command line).

    Args:
        argv: The arguments, as on the command line.
        command: The command shown at the top of the section (default: this process's).
        writer: The script named in the section's markers.
    """
    args = _arguments(argv)
    checkpoint = Path(args.checkpoint).resolve()
    if not (checkpoint / "manifest.json").exists():
        print(f"no checkpoint at {checkpoint}: pass --checkpoint (make bench trains one)")
        return 2
    if command is None:
        command = report.command_line()
    work_dir = Path(args.work_dir).resolve()
    ctx = context(REPO, checkpoint, work_dir, threads=args.threads, device=args.device)
    facts = report.machine_facts(REPO)
    cells = len(args.workloads) * len(args.concurrency)
    print(
        f"{len(args.servers)} servers x {args.rounds} rounds x up to {cells} cells of "
        f"{args.warmup + args.duration:g} s, plus starts and stops",
        flush=True,
    )
    started = time.time()
    run = Bench(args, ctx).measure()
    summary = summarise(run)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = work_dir / f"serve-bench-{stamp}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    best = {f"{w} c={c}": peer for (w, c), peer in best_peers(summary).items()}
    raw.write_text(
        json.dumps(
            {
                "command": command,
                "facts": facts,
                "servers": args.servers,
                "workloads": args.workloads,
                "concurrency": args.concurrency,
                "peers": list(PEERS),
                "best_peers": best,
                "run": run.__dict__,
                "summary": summary,
            },
            indent=1,
            allow_nan=True,
        )
    )
    plots = [] if args.no_plots else draw_plots(args, ctx, raw)
    section = Page(args, ctx, run, summary, facts, command, plots).render()
    report.write_section(Path(args.out), args.section, section, writer)
    print(f"\nwrote {args.out} ({(time.time() - started) / 60:.1f} min); raw numbers {raw}")
    for plot in plots:
        print(f"plot {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
