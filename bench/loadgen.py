"""A closed-loop gRPC load generator for the Open Inference Protocol and the image API.

N callers share a few channels; each sends a request, waits for its answer and sends the
next (a stream caller keeps up to `depth` requests in flight on its own stream). Requests
are serialised once per workload, so every server receives the same bytes. A run is a
warm-up followed by a measured window: a fixed duration, or a fixed number of requests.
Only answers completed inside the window count, and every non-OK status is counted by its
code.

    python bench/loadgen.py --target 127.0.0.1:9000 --checkpoint runs/digits \\
        --workload oip-uint8-1 --concurrency 8 --duration 2

The module reads the checkpoint's manifest as JSON and never imports torch: it shares the
machine with the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
from PIL import Image

from raysight._proto.inference import grpc_service_pb2 as pb
from raysight._proto.raysight.v1 import image_service_pb2 as image_pb
from raysight.codec import oip

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
CLASSIFY = "/raysight.v1.ImageService/Classify"
INPUT_NAME = "images"

# name -> (method, OIP datatype or "PNG", images per request)
WORKLOADS: dict[str, tuple[str, str, int]] = {
    "oip-fp32-1": (MODEL_INFER, "FP32", 1),
    "oip-fp32-8": (MODEL_INFER, "FP32", 8),
    "oip-uint8-1": (MODEL_INFER, "UINT8", 1),
    "oip-uint8-8": (MODEL_INFER, "UINT8", 8),
    "stream-uint8-1": (MODEL_STREAM_INFER, "UINT8", 1),
    "classify-png": (CLASSIFY, "PNG", 1),
}
"""Every workload the bench knows. FP32 carries normalised inputs, UINT8 raw pixels; both
travel in raw_input_contents."""

STALL_S = 0.003
"""A gap between answers counted as a stall: over twice a lone request's round trip through
`raysight serve` on the 2-core build machine (p50 about 1.3 ms)."""

STREAM_ERROR = "STREAM_ERROR"
"""The code counted for an in-band error of a stream (ModelStreamInferResponse.error_message)."""

StreamReply = Literal["triton", "plain"]
"""How a server answers ModelStreamInfer. "triton": ModelStreamInferResponse messages (an
in-band error_message, or infer_response with the request's id), as Triton's protocol and
raysight have it; answers are matched to requests by id. "plain": bare ModelInferResponse
messages, as MLServer's own copy of the protocol has it, in request order but each with
the id of the stream's first request; answers are matched by order, and an error ends the
stream."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # 8 images of 3x224x224 FP32 exceed gRPC's 4 MiB default
CHANNEL_OPTIONS = [
    # Each channel its own connection: gRPC would otherwise share one between channels with
    # equal arguments.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class ModelFacts:
    """What requests need from a checkpoint, read from its manifest.json alone."""

    name: str  # raysight's default model name: "{model}-{dataset}"
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> ModelFacts:
        manifest = json.loads(Path(directory, "manifest.json").read_text())
        channels, height, width = manifest["input_shape"]
        return cls(
            name=f"{manifest['model']}-{manifest['dataset']}",
            input_shape=(channels, height, width),
            mean=tuple(manifest["preprocessing"]["mean"]),
            std=tuple(manifest["preprocessing"]["std"]),
        )


@dataclass(frozen=True)
class Workload:
    """One kind of request, serialised once.

    A unary workload sends `requests[0]` every time. A stream workload has one request per
    in-flight slot, each with the slot's `id`, so answers can be matched to requests.
    """

    name: str
    method: str
    kind: Literal["unary", "stream"]
    images: int  # per request
    requests: tuple[bytes, ...]
    ids: tuple[str, ...] = ()  # stream only: the id of each entry of `requests`

    @property
    def request_bytes(self) -> int:
        return len(self.requests[0])


def sample_pixels(shape: tuple[int, int, int], images: int, seed: int = 0) -> np.ndarray:
    """Deterministic pseudo-random pixels, (images, C, H, W) uint8."""
    return np.random.default_rng(seed).integers(0, 256, size=(images, *shape), dtype=np.uint8)


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, C, H, W) uint8 -> float32 the way training prepared images: x / 255, then per
    channel (x - mean) / std."""
    scale = np.asarray(std, dtype=np.float32)[None, :, None, None]
    shift = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    return ((pixels.astype(np.float32) / 255.0 - shift) / scale).astype(np.float32)


def png_bytes(pixels: np.ndarray) -> bytes:
    """One (C, H, W) uint8 image as a PNG file."""
    hwc = pixels.transpose(1, 2, 0)
    image = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _infer_request(model: ModelFacts, datatype: str, images: int, request_id: str = "") -> bytes:
    pixels = sample_pixels(model.input_shape, images)
    tensor = pixels if datatype == "UINT8" else normalise(pixels, model.mean, model.std)
    request = pb.ModelInferRequest(model_name=model.name, id=request_id)
    oip.encode_inputs(request, {INPUT_NAME: tensor})
    return request.SerializeToString()


def build_workload(name: str, model: ModelFacts, *, stream_depth: int = 4) -> Workload:
    """Serialise the requests of workload `name` (a key of WORKLOADS) for `model`.

    Peers implement no RepositoryIndex, so every OIP request names the model.
    """
    method, datatype, images = WORKLOADS[name]
    if method == CLASSIFY:
        image = png_bytes(sample_pixels(model.input_shape, 1)[0])
        request = image_pb.ClassifyRequest(image=image, top_k=1).SerializeToString()
        return Workload(name, method, "unary", images, (request,))
    if method == MODEL_STREAM_INFER:
        ids = tuple(f"slot-{i}" for i in range(stream_depth))
        requests = tuple(_infer_request(model, datatype, images, i) for i in ids)
        return Workload(name, method, "stream", images, requests, ids)
    return Workload(name, method, "unary", images, (_infer_request(model, datatype, images),))


@dataclass
class CellResult:
    """The measured window of one (server, workload, concurrency) run."""

    workload: str
    concurrency: int
    channels: int
    stream_depth: int  # requests in flight per stream; 1 for unary workloads
    seconds: float  # length of the measured window
    requests: int  # OK answers inside the window
    images: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # non-OK statuses in the window
    warmup_errors: dict[str, int] = field(default_factory=dict)
    client_cpu: float = 0.0  # the load generator's CPU seconds per second of the whole run
    offered_per_s: float = 0.0  # an open loop's arrival rate (bench/openloop.py); 0: closed
    arrived: int = 0  # an open loop's requests scheduled in the window (a Poisson draw)
    # Gaps over STALL_S between consecutive OK answers in a closed loop's window, and their
    # total seconds; None in an open loop, where a gap may be only a lull in arrivals.
    stalls: int | None = None
    stalled_s: float | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_s": self.requests_per_s,
            "images_per_s": self.images_per_s,
        }


class _Window:
    """Which answers count. By time: OK answers completed between the end of the warm-up and
    the end of the window, and failures of requests sent after the warm-up. By count:
    tickets after the first `warmup_requests`, until `requests` more were sent."""

    def __init__(
        self,
        *,
        duration_s: float | None,
        warmup_s: float,
        requests: int | None,
        warmup_requests: int,
    ) -> None:
        now = time.perf_counter()
        self.by_count = requests is not None
        self.opens = now + (0.0 if self.by_count else warmup_s)
        self.closes = self.opens + (duration_s or 0.0)
        self.limit = warmup_requests + (requests or 0)
        self.warmup_requests = warmup_requests
        self.issued = 0
        self.latencies: list[float] = []
        self.ends: list[float] = []  # when each OK answer in `latencies` came back
        self.errors: Counter[str] = Counter()
        self.warmup_errors: Counter[str] = Counter()
        self.first_start = float("inf")
        self.last_end = 0.0

    def take(self) -> int | None:
        """A ticket for the next request, or None when the caller should stop."""
        if self.by_count:
            if self.issued >= self.limit:
                return None
        elif time.perf_counter() >= self.closes:
            return None
        self.issued += 1
        return self.issued - 1

    def open(self) -> bool:
        """Whether tickets may still be taken."""
        if self.by_count:
            return self.issued < self.limit
        return time.perf_counter() < self.closes

    def record(self, ticket: int, started: float, ended: float, code: str | None) -> None:
        if self.by_count:
            counted = ticket >= self.warmup_requests
        elif code is None:
            counted = self.opens <= ended <= self.closes
        else:  # sent in the window: a failure noticed after it closed still counts
            counted = started >= self.opens
        if not counted:
            if code is not None:
                self.warmup_errors[code] += 1
            return
        if code is not None:
            self.errors[code] += 1
            return
        self.latencies.append(ended - started)
        self.ends.append(ended)
        self.first_start = min(self.first_start, started)
        self.last_end = max(self.last_end, ended)

    def seconds(self) -> float:
        if self.by_count:
            return max(self.last_end - self.first_start, 0.0)
        return self.closes - self.opens


def _code(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(exc).__name__


async def _unary_caller(
    call: Callable[..., Any], request: bytes, window: _Window, timeout: float
) -> None:
    while (ticket := window.take()) is not None:
        started = time.perf_counter()
        code = None
        try:
            await call(request, timeout=timeout)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            code = _code(exc)
        window.record(ticket, started, time.perf_counter(), code)


def _stream_answer(reply: StreamReply, data: bytes) -> tuple[str | None, str]:
    """(id, error message or "") of one ModelStreamInfer answer; the id is None where the
    server's answers come in order instead."""
    if reply == "plain":
        return None, ""
    answer = pb.ModelStreamInferResponse.FromString(data)
    return answer.infer_response.id, answer.error_message


async def _stream_caller(
    channel: grpc.aio.Channel,
    workload: Workload,
    window: _Window,
    timeout: float,
    reply: StreamReply,
) -> None:
    """Streams one after another until the window closes: one that fails, or that the
    server ends early, is replaced."""
    open_stream = channel.stream_stream(workload.method)  # bytes both ways
    while window.open():
        await _one_stream(open_stream(), workload, window, timeout, reply)


async def _one_stream(
    call: Any, workload: Workload, window: _Window, timeout: float, reply: StreamReply
) -> None:
    """Keep up to len(workload.requests) requests in flight on `call`, matching answers to
    requests by `id` (or by order, see StreamReply), until no ticket is left or the stream
    ends. Requests left unanswered count as failed: with the code that ended the stream, or
    NO_ANSWER when the server closed it cleanly."""
    slot_of = {request_id: slot for slot, request_id in enumerate(workload.ids)}
    free: asyncio.Queue[int] = asyncio.Queue()
    for slot in range(len(workload.requests)):
        free.put_nowait(slot)
    in_flight: dict[int, tuple[int, float]] = {}  # slot -> (ticket, sent at), oldest first

    async def write() -> None:
        while True:
            slot = await free.get()
            ticket = window.take()
            if ticket is None:
                break
            in_flight[slot] = (ticket, time.perf_counter())
            await call.write(workload.requests[slot])
        await call.done_writing()

    async def read() -> None:
        async for data in call:
            request_id, error = _stream_answer(reply, data)
            # No id: the answers come in order, so this one is the oldest request's.
            slot = next(iter(in_flight), None) if request_id is None else slot_of.get(request_id)
            if slot is None or slot not in in_flight:
                window.errors["UNMATCHED_ID"] += 1
                continue
            ticket, sent = in_flight.pop(slot)
            code = STREAM_ERROR if error else None
            window.record(ticket, sent, time.perf_counter(), code)
            free.put_nowait(slot)

    writer = asyncio.create_task(write())
    failure = None
    try:
        # Bounded by time in a timed run; a run by count trusts the server to answer.
        budget = None if window.by_count else window.closes - time.perf_counter() + timeout
        await asyncio.wait_for(read(), budget)
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        failure = _code(exc)
        call.cancel()
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    for ticket, sent in in_flight.values():
        window.record(ticket, sent, time.perf_counter(), failure or "NO_ANSWER")


async def run_cell(
    target: str,
    workload: Workload,
    *,
    concurrency: int,
    channels: int = 4,
    duration_s: float | None = 5.0,
    warmup_s: float = 1.0,
    requests: int | None = None,
    warmup_requests: int = 0,
    timeout_s: float = 30.0,
    stream_reply: StreamReply = "triton",
    credentials: grpc.ChannelCredentials | None = None,
) -> CellResult:
    """Drive `target` with `concurrency` closed-loop callers and measure one window.

    Args:
        target: HOST:PORT.
        workload: From `build_workload`.
        concurrency: Callers (for a stream workload, streams).
        channels: gRPC channels (each its own TCP connection) the callers share in turn.
        duration_s: The measured window, after `warmup_s`; ignored when `requests` is set.
        warmup_s: Seconds of load before the window opens.
        requests: Measure this many requests instead of a duration, after
            `warmup_requests` unmeasured ones.
        warmup_requests: See `requests`.
        timeout_s: Deadline of each call.
        stream_reply: How the server answers ModelStreamInfer (see StreamReply).
        credentials: TLS credentials; None: plaintext.

    Returns:
        The window's throughput, latency percentiles of OK answers, and non-OK counts.
    """
    channels = max(1, min(channels, concurrency))
    opened = [_channel(target, credentials, CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in opened))
        cpu_before = _cpu_seconds()
        wall_before = time.perf_counter()
        window = _Window(
            duration_s=duration_s,
            warmup_s=warmup_s,
            requests=requests,
            warmup_requests=warmup_requests,
        )
        if workload.kind == "stream":
            callers = [
                _stream_caller(opened[i % channels], workload, window, timeout_s, stream_reply)
                for i in range(concurrency)
            ]
        else:
            # Raw bytes both ways: no serialisation in the client; answers are not parsed.
            calls = [c.unary_unary(workload.method) for c in opened]
            callers = [
                _unary_caller(calls[i % channels], workload.requests[0], window, timeout_s)
                for i in range(concurrency)
            ]
        await asyncio.gather(*callers)
        client_cpu = (_cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    latencies_ms = np.asarray(window.latencies) * 1000.0
    stalls, stalled_s = stall_gaps(window.ends)
    p50, p90, p99 = (
        np.percentile(latencies_ms, [50, 90, 99]) if len(latencies_ms) else (np.nan,) * 3
    )
    return CellResult(
        workload=workload.name,
        concurrency=concurrency,
        channels=channels,
        stream_depth=len(workload.requests) if workload.kind == "stream" else 1,
        seconds=window.seconds(),
        requests=len(latencies_ms),
        images=len(latencies_ms) * workload.images,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        errors=dict(window.errors),
        warmup_errors=dict(window.warmup_errors),
        client_cpu=client_cpu,
        stalls=stalls,
        stalled_s=stalled_s,
    )


def stall_gaps(ends: list[float], over_s: float = STALL_S) -> tuple[int, float]:
    """Gaps longer than `over_s` between consecutive answers: how many, and their total
    seconds. In a closed loop every caller is waiting during such a gap, so it is a time
    in which the server answered no one."""
    gaps = np.diff(np.sort(np.asarray(ends, dtype=np.float64)))
    long = gaps[gaps > over_s]
    return len(long), float(long.sum())


def _channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def probe(
    target: str, workload: Workload, timeout_s: float = 30.0, stream_reply: StreamReply = "triton"
) -> str | None:
    """Check that `target` answers `workload`: one request, or for a stream one request per
    slot sent together. None when every answer came back OK, else what went wrong."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            if workload.kind == "stream":
                return await _probe_stream(channel, workload, timeout_s, stream_reply)
            await channel.unary_unary(workload.method)(workload.requests[0], timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return None


async def _probe_stream(
    channel: grpc.aio.Channel, workload: Workload, timeout_s: float, reply: StreamReply
) -> str | None:
    call = channel.stream_stream(workload.method)(iter(workload.requests), timeout=timeout_s)
    ids = []
    async for data in call:
        request_id, error = _stream_answer(reply, data)
        if error:
            return f"{STREAM_ERROR}: {error}"
        ids.append(request_id)
    if len(ids) != len(workload.requests):
        return f"{len(ids)} answers to {len(workload.requests)} requests on one stream"
    if reply == "triton" and sorted(map(str, ids)) != sorted(workload.ids):
        return f"answers with ids {ids} to requests {list(workload.ids)}"
    return None


def _print(result: CellResult) -> None:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(result.errors.items())) or "none"
    stalls = ""
    if result.stalls is not None and result.stalled_s is not None:
        stalls = (
            f", {result.stalls} gaps over {STALL_S * 1000:.0f} ms without an answer "
            f"({result.stalled_s * 1000:.0f} ms in all)"
        )
    print(
        f"{result.workload} c={result.concurrency}: {result.requests_per_s:.1f} req/s, "
        f"{result.images_per_s:.1f} images/s, p50 {result.p50_ms:.2f} ms, "
        f"p90 {result.p90_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, non-OK: {errors}, "
        f"client CPU {result.client_cpu:.2f}{stalls}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (its manifest)")
    parser.add_argument("--model-name", help="OIP model_name (default: the manifest's)")
    parser.add_argument("--workload", choices=WORKLOADS, default="oip-uint8-1")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated caller counts")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--stream-depth", type=int, default=4)
    parser.add_argument("--stream-reply", choices=("triton", "plain"), default="triton")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--requests", type=int, help="measure this many requests instead")
    parser.add_argument("--warmup-requests", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument("--tls-ca", help="connect over TLS, trusting this PEM CA")
    args = parser.parse_args()
    credentials = None
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
    model = ModelFacts.from_checkpoint(args.checkpoint)
    if args.model_name:
        model = ModelFacts(args.model_name, model.input_shape, model.mean, model.std)
    workload = build_workload(args.workload, model, stream_depth=args.stream_depth)
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        result = asyncio.run(
            run_cell(
                args.target,
                workload,
                concurrency=concurrency,
                channels=args.channels,
                duration_s=args.duration,
                warmup_s=args.warmup,
                requests=args.requests,
                warmup_requests=args.warmup_requests if args.requests else 0,
                stream_reply=args.stream_reply,
                credentials=credentials,
            )
        )
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
