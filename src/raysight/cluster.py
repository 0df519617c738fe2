"""Joining a Ray cluster, or starting a local one, the same way for every command."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def connect(
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
) -> bool:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`), else start one here.

    A local cluster's dashboard listens on 127.0.0.1 only. It runs at all because Ray's
    state API (which Ray Train uses to watch its workers) and job submission live there.

    Args:
        num_cpus: CPUs of a local cluster; None uses every core.
        metrics_port: where a local cluster exports Prometheus metrics (Ray's
            metrics_export_port); None lets Ray pick.
        dashboard_port: the local dashboard's port; None uses Ray's default, 8265.

    Returns:
        True when this process started the cluster (and should shut it down).
    """
    # Ray starts workers at nice 15; next to a busy driver on a small machine they starve.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        logger.info("joined the Ray cluster at %s", address)
        return False
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port or 8265,
        _temp_dir=os.environ.get("RAYSIGHT_RAY_TMPDIR") or None,
        _metrics_export_port=metrics_port,
    )
    logger.info("started a local Ray cluster with %s CPUs", ray.cluster_resources().get("CPU"))
    return True
