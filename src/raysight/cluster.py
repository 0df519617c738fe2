"""Joining a Ray cluster, or starting a local one, the same way for every command."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import ray

from raysight.console import route_worker_lines
from raysight.errors import ConfigError
from raysight.ports import free_loopback_port

logger = logging.getLogger(__name__)

TEMP_DIR_ENV = "RAYSIGHT_RAY_TMPDIR"
# Ray puts a local cluster's unix sockets at
#   <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
# and the kernel takes at most 107 bytes for such a path: 66 of them go after the temp dir
# (with a 7-digit pid, and the ".N" Ray may append to a socket's name).
_SOCKET_PATH_MAX = 107
_AFTER_TEMP_DIR = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")
MAX_TEMP_DIR = _SOCKET_PATH_MAX - _AFTER_TEMP_DIR
_DASHBOARD_PORT = 8265  # Ray's default


@contextlib.contextmanager
def connected(
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
    verbosity: int | None = None,
    json_lines: bool | None = None,
) -> Iterator[bool]:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`), else start one here.

    A local cluster keeps its sockets and logs in a fresh directory of its own under the
    system's temp dir (not under the checkout, whose path may be too long for a socket), and
    stops when the block ends. The directory goes with it, unless the block failed: then its
    logs are kept, and a warning says where. `RAYSIGHT_RAY_TMPDIR` names a directory to use
    (and keep) instead. A local cluster's dashboard listens on 127.0.0.1 only; it runs at
    all because Ray's state API (which Ray Train uses) and job submission live there.

    Args:
        num_cpus: CPUs of a local cluster; None uses every core.
        metrics_port: where a local cluster exports Prometheus metrics (Ray's
            metrics_export_port); None lets Ray pick.
        dashboard_port: the local dashboard's port; None: Ray's 8265 when it is free.
        verbosity: the threshold (a logging level) for lines Ray's processes write to the
            console; None takes the `raysight` logger's level (see console.py).
        json_lines: print kept lines as JSON objects; None: JSON unless stderr is a terminal.

    Yields:
        True when this process started the cluster.

    Raises:
        ConfigError: RAY_ADDRESS names no reachable cluster, a port of the local cluster is
            taken, or RAYSIGHT_RAY_TMPDIR is too long for Ray's sockets.
    """
    if ray.is_initialized():
        yield False
        return
    if verbosity is None:
        verbosity = logging.getLogger("raysight").getEffectiveLevel()
    # Ray's own driver-side lines ("Started a local Ray instance") only with --verbose.
    ray_level = logging.INFO if verbosity <= logging.DEBUG else logging.WARNING
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        with _keeping_sigterm_handler():
            ray.init(address=address, log_to_driver=True, logging_level=ray_level)
        route_worker_lines(verbosity, _json_lines(json_lines))
        logger.info("joined the Ray cluster at %s", address)
        yield False
        return
    if metrics_port:
        check_port_free(metrics_port, "stop it, or pick another port with --metrics-port")
    if dashboard_port:
        check_port_free(dashboard_port, "stop it, or pick another dashboard port")
    with _local_files() as temp_dir:
        # A run that died left its record in a kept RAYSIGHT_RAY_TMPDIR: ray.init would read
        # it and spend minutes trying to join that dead cluster instead of starting one.
        _address_file(temp_dir).unlink(missing_ok=True)
        with _keeping_sigterm_handler():
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=dashboard_port or _dashboard_port(),
                _temp_dir=str(temp_dir),
                _metrics_export_port=metrics_port,
                log_to_driver=True,
                logging_level=ray_level,
            )
        try:
            _address_file(temp_dir).write_text(ray.get_runtime_context().gcs_address)
            route_worker_lines(verbosity, _json_lines(json_lines))
            logger.info(
                "started a local Ray cluster with %s CPUs; dashboard http://%s",
                ray.cluster_resources().get("CPU"),
                ray._private.worker.get_dashboard_url(),
            )
            yield True
        finally:
            ray.shutdown()
            _address_file(temp_dir).unlink(missing_ok=True)


@contextlib.contextmanager
def _local_files() -> Iterator[Path]:
    """Ray's temp dir for a local cluster, named to every process the cluster starts.

    Ray's processes look for "the" local cluster (Ray Train's placement-group cleaner asks
    the state API without an address) in `$RAY_TMPDIR/ray/ray_current_cluster`, else among
    every GCS process on the machine, and fail when two clusters run here. So the temp dir is
    `<base>/ray`, and RAY_TMPDIR=<base> goes into the environment the cluster inherits.
    """
    base, owned = _temp_base()
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(base)
    failed = False
    try:
        yield base / "ray"
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True
        raise
    finally:
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        if owned and failed:
            logger.warning("Ray's logs of this run are kept in %s", base)
        elif owned:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """Put the caller's SIGTERM handler back after `ray.init`, which replaces it.

    Ray's replacement exits at once (sys.exit), and its core worker's crash handler then
    aborts the process: no cleanup runs, and the cluster's temp dir is left behind.
    """
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if in_main else None
    yield
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _address_file(temp_dir: Path) -> Path:
    """Where the cluster is named for its own processes (`ray_current_cluster`)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(str(temp_dir)))


def _json_lines(json_lines: bool | None) -> bool:
    return not sys.stderr.isatty() if json_lines is None else json_lines


def staging_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for a cluster process's files in flight (a checkpoint being written).

    It lies under the local cluster's private dir when raysight started the cluster (every
    process of it inherits RAY_TMPDIR): a worker killed mid-write, as on Ctrl-C, cannot remove
    its own, and the cluster's dir goes with the cluster. Elsewhere, the system temp dir.
    """
    return tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("RAY_TMPDIR") or None)


def short_temp_dir(prefix: str = "raysight-") -> Path:
    """A new private directory whose path leaves room for Ray's socket paths.

    The system temp dir when its path is short (Linux's /tmp), else /tmp itself (macOS's
    per-user temp dir is about 50 bytes long).
    """
    base = tempfile.gettempdir()
    if len(base) + len(prefix) + len("/12345678/ray") > MAX_TEMP_DIR:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _temp_base() -> tuple[Path, bool]:
    """The folder for the local cluster's temp dir, and whether it is ours to remove."""
    given = os.environ.get(TEMP_DIR_ENV)
    if not given:
        return short_temp_dir(), True
    path = Path(given).absolute()
    length = len(os.fsencode(str(path / "ray")))
    if length > MAX_TEMP_DIR:
        raise ConfigError(
            f"{TEMP_DIR_ENV}={path} is too long: Ray's unix sockets under it would pass the "
            f"107-byte limit; use a path of at most {MAX_TEMP_DIR - 4} bytes "
            "(e.g. /tmp/raysight), or unset it"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def _check_reachable(address: str) -> None:
    """Fail fast, naming the fix, where Ray itself would retry for minutes or misread."""
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"RAY_ADDRESS={address} is a dashboard (job submission) URL; raysight joins a "
            "cluster by its GCS address: set RAY_ADDRESS=HEAD:6379, submit this command "
            "with `ray job submit --address "
            f"{address}`, or unset RAY_ADDRESS to start a local cluster"
        )
    if address == "auto" or "://" in address:
        return  # Ray resolves "auto" from the local node; ray:// is Ray Client's own protocol
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({exc}): start one with "
            "`ray start --head`, correct the address (HOST:6379, the head's GCS port), or "
            "unset RAY_ADDRESS to start a local cluster"
        ) from exc


def _dashboard_port() -> int:
    """Ray's usual 8265, or any free port while another cluster here holds it (a serving
    `raysight serve` beside a `raysight train`): raysight finds the dashboard through Ray."""
    try:
        check_port_free(_DASHBOARD_PORT, "")
    except ConfigError:
        return free_loopback_port()
    return _DASHBOARD_PORT


def check_port_free(port: int, fix: str) -> None:
    """Raise a ConfigError that says `fix` when another process listens on `port` here.

    Ray's servers bind every interface, so the probe binds the wildcard address; with
    SO_REUSEADDR, as servers set it, so that a port a stopped server left in TIME_WAIT
    counts as free.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise ConfigError(
                f"port {port} is in use by another process ({exc.strerror}): {fix}"
            ) from exc
