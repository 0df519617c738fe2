"""Ray job entrypoint: train on the cluster this job was submitted to.

    ray job submit --working-dir . -- \
        python services/train_job.py --config services/train.yaml [KEY=VALUE ...]

KEY=VALUE pairs override fields of the YAML file (e.g. epochs=10 gpu=true workers=4).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from raysight.checkpoint import manifest_sha256
from raysight.cluster import connected
from raysight.config import TrainConfig, parse_assignment
from raysight.errors import ConfigError
from raysight.logs import setup_logging
from raysight.train.trainer import prepare, train

logger = logging.getLogger("raysight.train_job")


def _override(text: str) -> tuple[str, Any]:
    try:
        return parse_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("overrides", nargs="*", type=_override, help="KEY=VALUE overrides")
    args = parser.parse_args()
    setup_logging()
    cfg = TrainConfig.from_yaml(args.config, dict(args.overrides))
    prepared = prepare(cfg)  # the data and model checked before joining the cluster
    with connected():
        outcome = train(cfg, prepared)
    # The last line is machine-readable, for whoever reads the job's logs.
    logger.info(
        "result %s",
        json.dumps(
            {
                "checkpoint": str(outcome.checkpoint),
                # Serving's checkpoint_sha256 pins exactly this checkpoint.
                "manifest_sha256": manifest_sha256(outcome.checkpoint),
                f"{outcome.final_label}_accuracy": outcome.test.accuracy,
                "epoch": outcome.manifest.epoch,
                "run_path": outcome.run_path,
            }
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
