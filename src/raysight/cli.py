"""The `raysight` command: train, evaluate, data download, models."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

import numpy as np

from raysight.config import TrainConfig, parse_assignment
from raysight.errors import ConfigError, RaysightError
from raysight.logs import setup_logging

logger = logging.getLogger("raysight.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.handler(args))
    except RaysightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysight", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a model with Ray Train",
        description="Train with Ray Train on the cluster at RAY_ADDRESS, or on a local one. "
        "Flags override --config; both name the fields of the training config.",
    )
    train.add_argument("--config", help="YAML file of training settings")
    train.add_argument("--metrics-port", type=int, help="Prometheus port of a local Ray cluster")
    _add_config_flags(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="accuracy and confusion matrix of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory")
    evaluate.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    evaluate.add_argument("--data-dir", help="dataset directory or URI")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=512)
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.set_defaults(handler=_evaluate)

    data = commands.add_parser("data", help="dataset utilities").add_subparsers(
        dest="data_command", required=True
    )
    download = data.add_parser("download", help="fetch MNIST or Fashion-MNIST and verify them")
    download.add_argument("name", choices=("mnist", "fashion-mnist"))
    download.add_argument("--to", required=True, help="destination directory")
    download.set_defaults(handler=_download)

    serve = commands.add_parser(
        "serve",
        help="serve a checkpoint over gRPC with Ray Serve (blocks until Ctrl-C)",
        description="Start a local Ray cluster (or join RAY_ADDRESS) and serve the Open "
        "Inference Protocol, the image API and gRPC health on one port.",
    )
    serve.add_argument("--checkpoint", required=True, help="checkpoint directory or URI")
    serve.add_argument("--grpc-port", type=int, default=9000)
    serve.add_argument("--http-port", type=int, default=8000, help="Serve's HTTP port")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="Prometheus metrics of a local Ray cluster (Ray's export port)",
    )
    serve.add_argument("--replicas", type=int, default=1)
    serve.add_argument("--max-batch-size", type=int, default=32)
    serve.add_argument("--batch-wait-ms", type=float, default=5.0)
    serve.add_argument("--model-name", default="", help="default: <model>-<dataset>")
    serve.add_argument("--num-gpus", type=float, default=0.0, help="per replica; may be 0.5")
    serve.add_argument(
        "--ingress",
        choices=("proxy", "haproxy"),
        default="haproxy",
        help="HAProxy in front of direct-ingress replicas (default; measured 2x the "
        "throughput of the classic proxy), or Serve's classic gRPC proxy",
    )
    serve.add_argument(
        "--demo",
        type=int,
        default=0,
        metavar="N",
        help="once up, classify N test images of the checkpoint's dataset "
        "through the gRPC image API and print the answers",
    )
    serve.set_defaults(handler=_serve)

    predict = commands.add_parser("predict", help="classify image files through a server")
    predict.add_argument("images", nargs="+", help="PNG, JPEG or WebP files")
    predict.add_argument("--target", default="127.0.0.1:9000", help="HOST:PORT of the server")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(handler=_predict)

    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(handler=_models)
    return parser


def _field_help() -> dict[str, str]:
    """The docstring under each TrainConfig field, so the flags document themselves."""
    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are None so only given flags override."""
    hints = typing.get_type_hints(TrainConfig)
    docs = _field_help()
    group = parser.add_argument_group("training config (each also settable in --config)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        base = next((a for a in get_args(hint) if a is not type(None)), hint)
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": docs.get(field.name)}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(hint) is Literal:
            kwargs["choices"] = get_args(hint)
        elif get_origin(base) is tuple:
            kwargs.update(nargs=len(get_args(base)), type=get_args(base)[0], metavar=("H", "W"))
        elif get_origin(hint) is dict:
            flag = "--model-arg"
            kwargs.update(action="append", metavar="KEY=VALUE", type=_key_value)
        else:
            kwargs["type"] = base
        group.add_argument(flag, **kwargs)


def _key_value(text: str) -> tuple[str, Any]:
    try:
        return parse_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        if value is None:
            continue
        overrides[field.name] = dict(value) if field.name == "model_args" else value
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def _train(args: argparse.Namespace) -> int:
    import ray

    from raysight.cluster import connect
    from raysight.train.trainer import train

    cfg = _config_from_args(args)
    started = connect(metrics_port=args.metrics_port)
    try:
        outcome = train(cfg)
    finally:
        if started:
            ray.shutdown()
    metrics = outcome.manifest.metrics
    print(f"checkpoint: {outcome.checkpoint}")
    print(
        f"epoch {outcome.manifest.epoch}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"test accuracy {outcome.test.accuracy:.4f} ({outcome.test.samples} images)"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from raysight.engine import Engine
    from raysight.evaluate import dataset_batches, evaluate

    engine = Engine.from_directory(args.checkpoint)
    manifest = engine.manifest
    dataset = args.dataset or manifest.dataset
    data_dir = args.data_dir or manifest.train_config.get("data_dir")
    result = evaluate(
        engine, dataset_batches(dataset, data_dir, args.split, manifest, args.batch_size)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "dataset": dataset,
                    "split": args.split,
                    "accuracy": result.accuracy,
                    "loss": result.loss,
                    "samples": result.samples,
                    "class_names": list(result.class_names),
                    "confusion": result.confusion.tolist(),
                }
            )
        )
        return 0
    print(
        f"{dataset} {args.split}: accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  "
        f"({result.samples} images)"
    )
    print(_confusion_table(result.confusion, result.class_names, result.per_class_accuracy()))
    return 0


def _confusion_table(confusion: np.ndarray, names: Sequence[str], recall: np.ndarray) -> str:
    """Rows: true class; columns: predicted class; last column: per-class accuracy."""
    labels = [n[:8] for n in names]
    width = max(6, *(len(x) for x in labels), len(str(int(confusion.max(initial=0)))))
    head = " " * (width + 2) + " ".join(f"{x:>{width}}" for x in labels) + "  accuracy"
    rows = [
        f"{label:>{width}}  " + " ".join(f"{v:>{width}d}" for v in row) + f"  {acc:8.4f}"
        for label, row, acc in zip(labels, confusion, recall, strict=True)
    ]
    return "\n".join(["true \\ predicted", head, *rows])


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading
    from pathlib import Path

    if args.ingress == "haproxy":
        # Read by Serve's controller, which the local cluster starts with this environment.
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    import ray
    from ray import serve

    from raysight.cluster import connect
    from raysight.serve import runner
    from raysight.serve.settings import ServeSettings

    checkpoint = (
        args.checkpoint if "://" in args.checkpoint else str(Path(args.checkpoint).resolve())
    )
    settings = ServeSettings(
        checkpoint=checkpoint,
        model_name=args.model_name,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
    )
    stop = threading.Event()
    # Both stop serving (Kubernetes sends SIGTERM); handled here rather than relying on the
    # inherited disposition, which a shell leaves at "ignore" for background jobs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = connect(metrics_port=args.metrics_port)
    try:
        config = runner.serve_config(
            settings,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            replicas=args.replicas,
            num_gpus=args.num_gpus,
        )
        runner.deploy(config)
        print(f"serving {checkpoint} on gRPC port {args.grpc_port} ({args.ingress} ingress)")
        if args.demo:
            _demo(checkpoint, args.grpc_port, args.demo)
        if started:
            print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics")
        print("Ctrl-C stops", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        if started:
            # Our own cluster: stopping it takes Serve, its replicas and HAProxy with it. (A
            # terminal's Ctrl-C also reaches Ray's processes, so serve.shutdown() could wait
            # forever on a controller that is already gone.)
            ray.shutdown()
        else:
            serve.delete(runner.APP_NAME)  # someone else's cluster: remove only our app
    return 0


def _demo(checkpoint: str, port: int, count: int) -> None:
    """Write `count` test images as PNG files and classify them through the gRPC API."""
    from pathlib import Path

    from PIL import Image

    from raysight.checkpoint import read_manifest
    from raysight.client import ImageClient
    from raysight.data import load_arrays

    manifest = read_manifest(checkpoint)
    split = load_arrays(manifest.dataset, manifest.train_config.get("data_dir"), "test")
    samples = Path(checkpoint).parent / f"{Path(checkpoint).name}-samples"
    samples.mkdir(exist_ok=True)
    with ImageClient(f"127.0.0.1:{port}") as client:
        for i in range(min(count, len(split))):
            pixels = split.images[i].transpose(1, 2, 0)  # (H, W, C) for PIL
            if pixels.shape[2] == 1:
                pixels = pixels[:, :, 0]
            path = samples / f"{i:02d}-{split.class_names[split.labels[i]]}.png"
            Image.fromarray(pixels).save(path)
            result = client.classify(path.read_bytes(), top_k=3)
            labels = ", ".join(f"{x.label} ({x.score:.3f})" for x in result.labels)
            print(f"{path.name}: {labels}")
    print(f"try: raysight predict {samples}/*.png --target 127.0.0.1:{port}")


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import grpc

    from raysight.client import ImageClient

    with ImageClient(args.target) as client:
        for path in args.images:
            try:
                result = client.classify(Path(path).read_bytes(), top_k=args.top_k)
            except OSError as exc:
                print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
                return 2
            except grpc.RpcError as exc:
                print(f"{path}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            labels = ", ".join(f"{x.label} ({x.score:.3f})" for x in result.labels)
            print(f"{path}: {labels}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from raysight.data.download import download

    for path in download(args.name, args.to):
        print(path)
    return 0


def _models(args: argparse.Namespace) -> int:
    from raysight.models import MODELS

    for name, spec in MODELS.items():
        print(f"{name:10s} {spec.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
