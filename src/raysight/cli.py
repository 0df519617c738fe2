"""The `raysight` command: train, evaluate, data download, models; serve (cli_serve),
predict (cli_predict), sign and verify (cli_sign)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import numpy as np

from raysight import cli_predict, cli_serve, cli_sign
from raysight.config import TrainConfig
from raysight.errors import ConfigError, RaysightError
from raysight.flags import add_flags, flag_overrides
from raysight.logs import setup_logging

logger = logging.getLogger("raysight.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    # The console's threshold, for raysight's lines and the ones Ray's processes forward.
    setup_logging(
        logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    )
    # `kill`, a timeout or a job's stop ends a command as Ctrl-C does: through the cleanup
    # of every block it is in (a local Ray cluster stops and its temp dir goes).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.handler(args))
    except RaysightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def console_main() -> int:
    """The `raysight` console script: `main` in a process of its own, whose environment a
    local cluster inherits."""
    _local_cluster_on_loopback()
    return main()


def _local_cluster_on_loopback() -> None:
    """A Ray cluster this command starts listens on 127.0.0.1 only.

    Ray 2.60 takes the machine's outward address as a local node's and binds its servers and
    its metrics exporter to every interface; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its
    single-machine mode, the default on macOS) it uses 127.0.0.1 instead. Ray reads the
    variable when it is imported, so before any command imports it; the processes the
    cluster starts inherit it. Not when joining RAY_ADDRESS: the driver must then be
    reachable at the node's real address.
    """
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysight", description=__doc__)
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug lines, and every line Ray's processes write (by default only raysight's "
        "lines and warnings or errors show)",
    )
    loudness.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings, errors and results"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a model with Ray Train",
        description="Train with Ray Train on the cluster at RAY_ADDRESS, or on a local one. "
        "Flags override --config; both name the fields of the training config.",
    )
    train.add_argument("--config", help="YAML file of training settings")
    train.add_argument("--metrics-port", type=int, help="Prometheus port of a local Ray cluster")
    add_flags(train, TrainConfig, title="training config (each also settable in --config)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="accuracy and confusion matrix of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory")
    evaluate.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    evaluate.add_argument("--data-dir", help="dataset directory or URI")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=512)
    evaluate.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Ray tasks scoring a shard each, on the cluster at RAY_ADDRESS or a local one "
        "(default: 2); 0 scores in this process, without Ray",
    )
    evaluate.add_argument("--gpu", action="store_true", help="one GPU per task")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.set_defaults(handler=_evaluate)

    data = commands.add_parser("data", help="dataset utilities").add_subparsers(
        dest="data_command", required=True
    )
    download = data.add_parser("download", help="fetch MNIST or Fashion-MNIST and verify them")
    download.add_argument("name", choices=("mnist", "fashion-mnist"))
    download.add_argument("--to", required=True, help="destination directory")
    download.set_defaults(handler=_download)

    cli_serve.add_commands(commands)
    cli_predict.add_commands(commands)
    cli_sign.add_commands(commands)

    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(handler=_models)
    return parser


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training config: --config's file if given, overridden by the flags given."""
    overrides = flag_overrides(args, TrainConfig)
    if args.config:
        return TrainConfig.from_yaml(args.config, overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def _train(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)  # first, so a bad setting is refused before Ray loads
    from raysight.cluster import connected
    from raysight.train.trainer import prepare, train

    prepared = prepare(cfg)  # and the data and model too, before a cluster starts
    with connected(metrics_port=args.metrics_port):
        outcome = train(cfg, prepared)
    metrics = outcome.manifest.metrics
    from raysight.checkpoint import manifest_sha256

    # The digest that pins this checkpoint for serving (checkpoint_sha256).
    print(
        f"checkpoint: {outcome.checkpoint} (manifest sha256 {manifest_sha256(outcome.checkpoint)})"
    )
    print(
        f"epoch {outcome.manifest.epoch}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"{outcome.final_label} accuracy {outcome.test.accuracy:.4f} "
        f"({outcome.test.samples} images{_final_note(outcome.final_split)})"
    )
    return 0


def _final_note(split: str) -> str:
    return "" if split == "test" else f" in {split}/: no test folder"


def _evaluate(args: argparse.Namespace) -> int:
    from raysight.checkpoint import load_checkpoint

    if args.workers < 0 or (args.gpu and not args.workers):
        raise ConfigError("--workers must be >= 0, and --gpu needs at least one worker")
    checkpoint = load_checkpoint(args.checkpoint)
    manifest = checkpoint.manifest
    dataset = args.dataset or manifest.dataset
    data_dir = args.data_dir or manifest.train_config.get("data_dir")
    if args.workers:
        from raysight.cluster import connected
        from raysight.train.evaluation import evaluate_on_workers, even_placement, labelled_split

        split = labelled_split(dataset, data_dir, args.split, manifest)
        with connected():
            placement = even_placement(args.workers, args.gpu)
            result = evaluate_on_workers(checkpoint, split, placement)
    else:
        from raysight.engine import Engine
        from raysight.evaluate import dataset_batches, evaluate

        batches = dataset_batches(dataset, data_dir, args.split, manifest, args.batch_size)
        result = evaluate(Engine(checkpoint), batches)
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
