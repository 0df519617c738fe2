"""The ingress-hop bench's HAProxy configurations carry real gRPC calls through the binary Ray
runs, in both modes, and its report compares each path with no proxy."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import ingress_hop
from servers.process import free_port, running

from raysight.serve.haproxy_launch import real_binary
from tests.raw_infer_server import raw_infer_server

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _binary() -> str:
    binary = real_binary({})
    if shutil.which(binary) is None:
        pytest.skip(f"no HAProxy binary at {binary}")
    return binary


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"seen:" + request


async def _call_until_up(target: str, payload: bytes, timeout_s: float = 15.0) -> bytes:
    """The answer to one call through `target`, retried while the proxy is still starting."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        while True:
            try:
                return bytes(await call(payload, timeout=2))
            except grpc.aio.AioRpcError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_each_mode_carries_calls_to_the_backend(tmp_path: Path, mode: str) -> None:
    binary = _binary()

    async def scenario() -> list[bytes]:
        async with raw_infer_server(_echo) as backend:
            port = free_port()
            config = tmp_path / f"{mode}.cfg"
            config.write_text(ingress_hop.haproxy_config(mode, port, [backend]))
            check = subprocess.run(
                [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr
            with running([binary, "-db", "-f", str(config)], tmp_path / "haproxy.log", grace_s=5):
                target = f"127.0.0.1:{port}"
                first = await _call_until_up(target, b"one")
                async with grpc.aio.insecure_channel(target) as channel:
                    call = channel.unary_unary(METHOD)
                    rest = await asyncio.gather(*(call(b"n%d" % i, timeout=5) for i in range(8)))
                return [first, *map(bytes, rest)]

    answers = asyncio.run(scenario())
    assert answers == [b"seen:one", *(b"seen:n%d" % i for i in range(8))]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="http or tcp"):
        ingress_hop.haproxy_config("udp", 9000, ["127.0.0.1:1"])


def test_the_report_gives_medians_and_the_ratio_to_direct() -> None:
    samples = [
        ingress_hop.Sample("direct", 1000.0, 1.0, 2.0, None),
        ingress_hop.Sample("direct", 1200.0, 0.9, 1.8, None),
        ingress_hop.Sample("direct", 1100.0, 0.95, 1.9, None),
        ingress_hop.Sample("http", 800.0, 1.2, 3.0, 90.0),
        ingress_hop.Sample("http", 770.0, 1.3, 3.1, 100.0),
        ingress_hop.Sample("http", 880.0, 1.1, 2.9, 95.0),
        ingress_hop.Sample("tcp", 1045.0, 1.0, 2.0, 45.0),
        ingress_hop.Sample("tcp", 1000.0, 1.0, 2.0, 50.0),
        ingress_hop.Sample("tcp", 1100.0, 1.0, 2.0, 40.0),
    ]
    rows = {
        line.split(" | ")[0].strip("| "): line for line in ingress_hop.report(samples).splitlines()
    }
    assert rows["direct"].startswith("| direct | 1,100 | 1,000, 1,200, 1,100 | 0.95 |")
    assert "| 0.73x | 95 |" in rows["http"]  # 800 / 1,100
    assert "| 0.95x | 45 |" in rows["tcp"]  # 1,045 / 1,100
    assert rows["direct"].endswith("| 1.00x | - |")


def test_tuning_lines_go_to_the_global_section(tmp_path: Path) -> None:
    binary = _binary()
    text = ingress_hop.haproxy_config(
        "http", 9000, ["127.0.0.1:1"], ["tune.sched.low-latency on", "busy-polling"]
    )
    global_section = text.split("defaults\n")[0]
    assert "    tune.sched.low-latency on\n    busy-polling\n" in global_section
    config = tmp_path / "tuned.cfg"
    config.write_text(text)
    check = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
