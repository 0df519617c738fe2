"""What one HAProxy hop costs a gRPC request: HTTP mode (as Serve routes gRPC) against TCP
mode against no proxy, in front of the same backend.

Serve's HAProxy ingress decodes each HTTP/2 request and encodes it again towards a replica
(`mode http`, `proto h2` on both sides), which lets it pick a replica per request and route
by path or header. A TCP-mode proxy only copies bytes and picks a replica per connection.
This bench starts HAProxy (the binary Ray runs, or `--haproxy`) with each configuration in
turn in front of the same backends, alternates the three paths for `--rounds` rounds with the
closed-loop load generator, and prints medians and HAProxy's CPU per request:

    python bench/ingress_hop.py --checkpoint runs/digits                   # a bare no-work server
    python bench/ingress_hop.py --checkpoint runs/digits \\
        --backends 127.0.0.1:40000,127.0.0.1:40001                         # running replicas

With no `--backends` it starts `servers/bare.py` without a model (fixed answers), so the
difference between the paths is the proxy's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadgen import WORKLOADS, ModelFacts, build_workload, run_cell
from servers.process import free_port, running, wait_ready

from raysight.serve.haproxy_launch import real_binary

HERE = Path(__file__).resolve().parent
MODES = ("direct", "http", "tcp")
READY_TIMEOUT_S = 60.0

_GLOBAL = """global
    maxconn 4096
    nbthread 1
    tune.bufsize 16384
"""
_DEFAULTS = """defaults
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
"""
# Ray 2.60's gRPC frontend and backend, less its health checks, logs and routing rules.
_HTTP = """    mode http
    option http-no-delay
    balance leastconn
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend replicas
backend replicas
    http-reuse always
{servers}"""
_TCP = """    mode tcp
    balance leastconn
frontend grpc
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
{servers}"""


def haproxy_config(
    mode: str, port: int, backends: Sequence[str], extra_global: Sequence[str] = ()
) -> str:
    """An HAProxy configuration listening on 127.0.0.1:`port` in `mode` ("http" or "tcp"),
    balancing by least connections over `backends` (HOST:PORT each), with `extra_global`
    lines (tuning to try) added to its global section."""
    if mode not in ("http", "tcp"):
        raise ValueError(f"mode must be http or tcp, got {mode!r}")
    proto = " proto h2" if mode == "http" else ""
    servers = "".join(f"    server b{i} {target}{proto}\n" for i, target in enumerate(backends))
    body = _HTTP if mode == "http" else _TCP
    tuning = "".join(f"    {line}\n" for line in extra_global)
    return _GLOBAL + tuning + _DEFAULTS + body.format(port=port, servers=servers)


@dataclass(frozen=True)
class Sample:
    """One round of one path."""

    mode: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    proxy_us_per_request: float | None  # HAProxy's CPU per answered request; None: direct


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _proxy(
    binary: str, mode: str, backends: Sequence[str], work: Path, extra_global: Sequence[str]
) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = work / f"haproxy-{mode}.cfg"
    config.write_text(haproxy_config(mode, port, backends, extra_global))
    with running(
        [binary, "-db", "-f", str(config)], work / f"haproxy-{mode}.log", grace_s=5
    ) as child:
        target = f"127.0.0.1:{port}"
        wait_ready(target, child, READY_TIMEOUT_S)
        yield target, child.pid


def _measure(
    target: str, args: argparse.Namespace, model: ModelFacts
) -> tuple[float, float, float]:
    workload = build_workload(args.workload, model)
    cell = asyncio.run(
        run_cell(
            target,
            workload,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
    )
    if cell.errors:
        raise RuntimeError(f"{target}: non-OK answers {cell.errors}")
    return cell.requests_per_s, cell.p50_ms, cell.p99_ms


def one_round(
    args: argparse.Namespace, backends: Sequence[str], binary: str, work: Path
) -> list[Sample]:
    """Each path once, in MODES order."""
    model = ModelFacts.from_checkpoint(args.checkpoint)
    samples = []
    for mode in MODES:
        if mode == "direct":
            rate, p50, p99 = _measure(backends[0], args, model)
            samples.append(Sample(mode, rate, p50, p99, None))
            continue
        with _proxy(binary, mode, backends, work, args.haproxy_global) as (target, pid):
            before, started = _cpu_s(pid), time.perf_counter()
            rate, p50, p99 = _measure(target, args, model)
            elapsed = time.perf_counter() - started
            cpu = _cpu_s(pid) - before
        # Over the warm-up and the window together: requests answered in both at `rate`.
        per_request = cpu / (rate * elapsed) * 1e6 if rate > 0 else float("nan")
        samples.append(Sample(mode, rate, p50, p99, per_request))
    return samples


def report(samples: Sequence[Sample]) -> str:
    """A markdown table of each path's median, its rounds, and its ratio to direct."""
    by_mode = {mode: [s for s in samples if s.mode == mode] for mode in MODES}
    direct = statistics.median(s.requests_per_s for s in by_mode["direct"])
    lines = [
        "| path | req/s (median) | rounds | p50 ms | p99 ms | vs direct | HAProxy CPU us/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, rows in by_mode.items():
        rate = statistics.median(s.requests_per_s for s in rows)
        rounds = ", ".join(f"{s.requests_per_s:,.0f}" for s in rows)
        p50 = statistics.median(s.p50_ms for s in rows)
        p99 = statistics.median(s.p99_ms for s in rows)
        cpu = [s.proxy_us_per_request for s in rows if s.proxy_us_per_request is not None]
        cpu_text = f"{statistics.median(cpu):.0f}" if cpu else "-"
        lines.append(
            f"| {mode} | {rate:,.0f} | {rounds} | {p50:.2f} | {p99:.2f} | "
            f"{rate / direct:.2f}x | {cpu_text} |"
        )
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="for the request bytes")
    parser.add_argument("--backends", default="", help="HOST:PORT,...; unset: a bare server")
    parser.add_argument("--haproxy", default="", help="HAProxy binary; unset: the one Ray runs")
    parser.add_argument(
        "--haproxy-global",
        action="append",
        default=[],
        metavar="LINE",
        help="a line for HAProxy's global section, e.g. 'tune.sched.low-latency on'; repeatable",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="oip-fp32-1")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    binary = args.haproxy or real_binary(os.environ)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingress-hop-")))
        backends = [b for b in args.backends.split(",") if b]
        if not backends:
            port = free_port()
            argv_bare = [sys.executable, str(HERE / "servers" / "bare.py"), "--port", str(port)]
            child = stack.enter_context(running(argv_bare, work / "bare.log", grace_s=10))
            backends = [f"127.0.0.1:{port}"]
            wait_ready(backends[0], child, READY_TIMEOUT_S)
        samples: list[Sample] = []
        for number in range(1, args.rounds + 1):
            for sample in one_round(args, backends, binary, work):
                samples.append(sample)
                sys.stderr.write(
                    f"round {number} {sample.mode}: {sample.requests_per_s:,.0f} req/s, "
                    f"p50 {sample.p50_ms:.2f} ms\n"
                )
    sys.stdout.write(
        f"{args.workload}, concurrency {args.concurrency}, backends {', '.join(backends)}, "
        f"HAProxy {binary}\n\n{report(samples)}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
