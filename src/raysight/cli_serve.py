"""`raysight serve` and `raysight predict`: a checkpoint served over gRPC, and a client."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from raysight.errors import ConfigError
from raysight.flags import add_flags, flag_overrides
from raysight.serve.haproxy_launch import (
    ADMIN_HOST_ENV,
    BUNDLE_DIR_ENV,
    CERT_ENV,
    CLIENT_CA_ENV,
    KEY_ENV,
)
from raysight.serve.settings import DEFAULT_MAX_MESSAGE_BYTES, MESSAGE_SIZE_ENV, ServeSettings
from raysight.serve.tls import ServerTls

INGRESS_MODES = ("haproxy", "proxy")  # the first is a local cluster's default


def add_commands(commands: Any) -> None:
    """Add `serve` to the CLI's subcommands."""
    serve = commands.add_parser(
        "serve",
        help="serve a checkpoint over gRPC with Ray Serve (blocks until Ctrl-C)",
        description="Start a local Ray cluster (or join RAY_ADDRESS) and serve the Open "
        "Inference Protocol, the image API and gRPC health on one port.",
    )
    serve.add_argument("--grpc-port", type=int, default=9000)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface the gRPC and HTTP ports of a local cluster listen on (default "
        "127.0.0.1; 0.0.0.0 for every interface). Ray's own ports and HAProxy's stats and "
        "metrics stay on 127.0.0.1",
    )
    serve.add_argument("--http-port", type=int, default=8000, help="Serve's HTTP port")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="Prometheus metrics of a local Ray cluster (Ray's export port)",
    )
    serve.add_argument(
        "--replicas",
        type=_replica_count,
        default="auto",
        help="replica count, or auto: on a cluster started here one per CPU core (one per "
        "GPU share with --num-gpus), at most 8; on a cluster at RAY_ADDRESS 1",
    )
    serve.add_argument("--num-gpus", type=float, default=0.0, help="per replica; may be 0.5")
    serve.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC request accepted; a larger one gets RESOURCE_EXHAUSTED before it "
        "is parsed (default: 64 MiB)",
    )
    serve.add_argument(
        "--ingress",
        choices=INGRESS_MODES,
        help="HAProxy in front of direct-ingress replicas (the default for a local cluster; "
        "measured 3.4x the throughput of the classic proxy), or Serve's classic gRPC proxy. "
        "A cluster at RAY_ADDRESS keeps the mode it was started with: there the flag only "
        "insists on it",
    )
    tls = serve.add_argument_group(
        "TLS (terminated by HAProxy: a local cluster with the haproxy ingress)"
    )
    tls.add_argument("--tls-cert", metavar="PEM", help="the server's certificate chain")
    tls.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    tls.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="CA certificates; clients must present a certificate one of them signed (mutual TLS)",
    )
    serve.add_argument(
        "--demo",
        type=int,
        default=0,
        metavar="N",
        help="once up, classify N test images of the checkpoint's dataset "
        "through the gRPC image API and print the answers",
    )
    add_flags(
        serve,
        ServeSettings,
        title="serving settings (each also a key of user_config in services/serve.yaml)",
        required=("checkpoint",),
    )
    serve.set_defaults(handler=_serve)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _replica_count(text: str) -> int | None:
    """--replicas: a positive count, or auto (None: chosen once the cluster is known)."""
    return None if text == "auto" else _positive_int(text)


def _serve(args: argparse.Namespace) -> int:
    # First, so a bad setting or checkpoint is refused before a cluster starts.
    local_cluster = not os.environ.get("RAY_ADDRESS")
    settings = _settings_from_args(args, local_cluster=local_cluster)
    tls = _server_tls(args)
    _check_checkpoint(settings, local_cluster=local_cluster)
    from raysight.cluster import check_port_free

    if local_cluster:  # its ports are on this machine
        check_port_free(args.grpc_port, "stop it, or pick another port with --grpc-port")
        check_port_free(args.http_port, "stop it, or pick another port with --http-port")
        os.environ.update(local_cluster_env(args, tls))
    if tls is None:
        return _serve_on_cluster(args, settings)
    # HAProxy's copy of the TLS key goes in here, and goes when serving stops.
    with tempfile.TemporaryDirectory(prefix="raysight-tls-") as bundle_dir:
        os.environ[BUNDLE_DIR_ENV] = bundle_dir
        return _serve_on_cluster(args, settings)


def _serve_on_cluster(args: argparse.Namespace, settings: ServeSettings) -> int:
    from raysight.cluster import connected
    from raysight.serve import runner

    stop = _StopSignals()
    # Both stop serving (Kubernetes sends SIGTERM); handled here rather than relying on the
    # inherited disposition, which a shell leaves at "ignore" for background jobs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handle)
    with connected(metrics_port=args.metrics_port) as started:
        # Our own cluster runs the mode set above; someone else's, the one it started with.
        ingress = args.ingress or (INGRESS_MODES[0] if started else None)
        try:
            _serve_until_stopped(args, settings, stop, ingress=ingress, local=started)
        finally:
            if not started:
                runner.remove()  # someone else's cluster: remove only our app
    # Our own cluster stopped as the block ended, taking Serve, its replicas and HAProxy with
    # it. (A terminal's Ctrl-C also reaches Ray's processes, so serve.shutdown() could wait
    # forever on a controller that is already gone.)
    return 0


class _StopSignals:
    """What Ctrl-C and SIGTERM do: end the serving loop, so the cluster stops in order; or,
    before serving starts, interrupt at once. A terminal's Ctrl-C also reaches Ray's
    processes, and a call still waiting on them (the deploy's request to the dashboard)
    would then wait for ever."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.serving = False

    def handle(self, signum: int, frame: object) -> None:
        self.stop.set()
        if not self.serving:
            raise KeyboardInterrupt


def _serve_until_stopped(
    args: argparse.Namespace,
    settings: ServeSettings,
    stop: _StopSignals,
    *,
    ingress: str | None,
    local: bool,
) -> None:
    import ray

    from raysight.serve import runner

    checkpoint = settings.checkpoint
    replicas: int | None = args.replicas
    if replicas is None and not local:
        replicas = 1  # auto on someone else's cluster: one
    elif replicas is None:  # auto on a cluster started here: fill it
        resources = ray.cluster_resources()
        replicas = runner.auto_replicas(resources, runner.REPLICA_CPUS, args.num_gpus)
    config = runner.serve_config(
        settings,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        host=args.host,
        replicas=replicas,
        num_gpus=args.num_gpus,
        max_message_bytes=args.max_message_bytes,
    )
    deployed = runner.deploy(config, ingress=ingress)
    ingress_words = _ingress_words(deployed.ingress)
    if args.tls_cert:
        ingress_words += ", mutual TLS" if args.tls_client_ca else ", TLS"
    print(
        f"serving {checkpoint} on gRPC port {args.grpc_port} "
        f"({ingress_words}, {replicas} replica{'s' if replicas > 1 else ''})"
    )
    if settings.rest:
        print(f"KServe V2 REST: http://127.0.0.1:{args.http_port}/v2")
    if deployed.neighbours:
        print(
            f"beside {', '.join(deployed.neighbours)} on the same Serve: gRPC clients must "
            f"send the metadata application={runner.APP_NAME} to reach raysight"
        )
    if args.demo:
        application = runner.APP_NAME if deployed.neighbours else ""
        _demo(checkpoint, args.grpc_port, args.demo, application)
    if local:
        print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics")
    print("Ctrl-C stops", flush=True)
    stop.serving = True
    while not stop.stop.wait(1.0):
        pass


def _check_checkpoint(settings: ServeSettings, *, local_cluster: bool) -> None:
    """Verify the checkpoint here, as every replica will, so a bad one fails the command with
    the reason before anything is deployed (a replica refuses it too, but keeps serving the
    previous model, so a deploy that waited for replicas would look successful).

    Only where this machine sees what the replicas see: always for a cluster started here;
    for someone else's cluster, a directory that exists here. Object-store URIs are checked
    by the replicas, with the cluster's credentials.

    Raises:
        CheckpointError: the replicas would refuse it; the message says why.
    """
    from raysight.checkpoint import verify_checkpoint
    from raysight.serve.model import check_signature

    checkpoint = settings.checkpoint
    if "://" in checkpoint or not (local_cluster or Path(checkpoint).is_dir()):
        return
    check_signature(checkpoint, settings.trust)
    verify_checkpoint(checkpoint, expected_sha256=settings.trust.sha256)


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The TLS files, checked, where this command can apply them.

    Raises:
        ConfigError: the files are unusable, or TLS is asked of a cluster or ingress that
            this command cannot give it to.
    """
    tls = ServerTls.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    if tls is None:
        return None
    if os.environ.get("RAY_ADDRESS"):
        raise ConfigError(
            "TLS is set where a cluster starts: put RAYSIGHT_TLS_CERT, RAYSIGHT_TLS_KEY (and "
            "RAYSIGHT_TLS_CLIENT_CA) and RAY_SERVE_HAPROXY_BINARY_PATH=$(which "
            "raysight-haproxy) in the environment of `ray start` (the Helm chart's "
            "tls.secretName does), or unset RAY_ADDRESS to start a local cluster"
        )
    if args.ingress == "proxy":
        raise ConfigError(
            "TLS terminates in HAProxy; Ray's classic gRPC proxy has none: drop "
            "--ingress proxy (the default is haproxy) or the --tls-* flags"
        )
    if args.demo:
        raise ConfigError("--demo speaks plaintext; with TLS use `raysight predict --tls-ca`")
    tls.check()
    return tls


def local_cluster_env(args: argparse.Namespace, tls: ServerTls | None) -> dict[str, str]:
    """What the local cluster's processes read from the environment they start with."""
    ingress = args.ingress or INGRESS_MODES[0]
    env = {
        # Read by Serve's controller; set either way, so a value left in the shell cannot
        # pick the mode instead.
        "RAY_SERVE_ENABLE_HA_PROXY": "1" if ingress == "haproxy" else "0",
        # The classic proxy reads its cap from here (replicas get it from the Serve config).
        MESSAGE_SIZE_ENV: str(args.max_message_bytes),
        # HAProxy runs through raysight's launcher: admin listeners on 127.0.0.1, TLS.
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_launcher(),
        ADMIN_HOST_ENV: "127.0.0.1",
        # Ray's default, 4 HAProxy threads, contends with the replicas on a small machine:
        # on 2 cores 1 thread measured 8% more unary and 28% more streamed requests/s at 32
        # callers (docs/benchmarks.md). A quarter of the cores, unless set.
        "RAY_SERVE_HAPROXY_NBTHREAD": os.environ.get("RAY_SERVE_HAPROXY_NBTHREAD")
        or str(max(1, (os.cpu_count() or 1) // 4)),
    }
    for name in (CERT_ENV, KEY_ENV, CLIENT_CA_ENV):
        env[name] = ""  # a value left in the shell must not turn TLS on
    if tls is not None:
        env.update(tls.cluster_env())
    return env


def haproxy_launcher() -> str:
    """The `raysight-haproxy` script installed beside this interpreter's `raysight`.

    Raises:
        ConfigError: the package was installed without its scripts.
    """
    path = Path(sys.executable).parent / "raysight-haproxy"
    found = str(path) if path.is_file() else shutil.which("raysight-haproxy")
    if not found:
        raise ConfigError(
            "raysight-haproxy is not installed beside raysight: reinstall the package "
            "(pip install raysight) so its scripts are on PATH"
        )
    return found


def _ingress_words(mode: str | None) -> str:
    """The startup line's account of the ingress: what the cluster runs, or that it is
    unknown (a cluster whose Serve runs no proxy does not say)."""
    return f"{mode} ingress" if mode else "ingress mode: as the cluster was started"


def _settings_from_args(args: argparse.Namespace, *, local_cluster: bool) -> ServeSettings:
    """The serving settings given as flags; the class supplies the defaults, but for
    pin_cpus, on unless told otherwise on a cluster started here: its replicas, one per
    core, own the machine's cores (serve/affinity.py)."""
    values = flag_overrides(args, ServeSettings)
    if local_cluster:
        values.setdefault("pin_cpus", True)
    checkpoint = values["checkpoint"]
    # Replicas may run in another working directory: hand them an absolute path. (An empty
    # one stays empty, for ServeSettings to refuse rather than to become the current one.)
    if checkpoint and "://" not in checkpoint:
        values["checkpoint"] = str(Path(checkpoint).resolve())
    if values.get("signature_trust"):
        values["signature_trust"] = str(Path(values["signature_trust"]).resolve())
    return ServeSettings.from_dict(values, source="command line")


def _demo(checkpoint: str, port: int, count: int, application: str) -> None:
    """Write `count` test images as PNG files and classify them through the gRPC API.

    `application` names raysight's Serve application when others share the cluster.
    """
    from PIL import Image

    from raysight.checkpoint import read_manifest
    from raysight.client import ImageClient
    from raysight.data import load_arrays

    manifest = read_manifest(checkpoint)
    split = load_arrays(manifest.dataset, manifest.train_config.get("data_dir"), "test")
    samples = Path(checkpoint).parent / f"{Path(checkpoint).name}-samples"
    samples.mkdir(exist_ok=True)
    with ImageClient(f"127.0.0.1:{port}", application=application) as client:
        for i in range(min(count, len(split))):
            pixels = split.images[i].transpose(1, 2, 0)  # (H, W, C) for PIL
            if pixels.shape[2] == 1:
                pixels = pixels[:, :, 0]
            path = samples / f"{i:02d}-{split.class_names[split.labels[i]]}.png"
            Image.fromarray(pixels).save(path)
            result = client.classify(path.read_bytes(), top_k=3)
            labels = ", ".join(f"{x.label} ({x.score:.3f})" for x in result.labels)
            print(f"{path.name}: {labels}")
    also = f" --application {application}" if application else ""
    print(f"try: raysight predict {samples}/*.png --target 127.0.0.1:{port}{also}")
