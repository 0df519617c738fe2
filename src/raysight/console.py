"""What reaches the console from Ray's processes: raysight's lines, warnings and real errors.

Ray forwards every line its workers and actors write to the driver's terminal. During
training that is, per epoch, rank 0's own line and four or five lines of Ray's bookkeeping
(`Reporting training result ...` from every rank, `Checkpoint successfully created at ...`).
Ray offers no level for that: its Train messages carry no level at all. So the driver
classifies each forwarded line by its format and keeps it by the verbosity of the command:

- quiet: warnings and errors, from raysight and from Ray;
- normal (the default): raysight's lines at INFO and above, plus Ray's warnings and errors;
- verbose: everything, as Ray prints it.

In JSON-lines mode (a job's log, CI) every kept line is printed as one JSON object, so the
log stays machine-readable: raysight's worker lines are JSON already, Ray's are wrapped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "D": logging.DEBUG,
    "INFO": logging.INFO,
    "I": logging.INFO,
    "WARNING": logging.WARNING,
    "W": logging.WARNING,
    "ERROR": logging.ERROR,
    "E": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
    "F": logging.CRITICAL,
}
_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
_NAMES = "DEBUG|INFO|WARNING|ERROR|CRITICAL"
# raysight's text format (logs.py): "<time> <LEVEL> <message>".
_RAYSIGHT_TEXT = re.compile(rf"^{_STAMP} ({_NAMES}) ")
# Ray's formats: Python logging ("<time>\t<LEVEL> file.py:12 -- msg"), Serve's
# ("<LEVEL> <time> ..."), the C++ core's glog ("[<time> E 123 456] file.cc:7: msg"), and
# Python's warnings module ("file.py:12: UserWarning: msg").
_RAY_FORMATS = (
    re.compile(rf"^{_STAMP}\t({_NAMES}) "),
    re.compile(rf"^({_NAMES}) {_STAMP} "),
    re.compile(rf"^\[{_STAMP} ([DIWEF]) \d+ \d+\] "),
    re.compile(r"^\S+:\d+: \w*(Warning): "),
)
# Lines Ray writes at warning or error level on every healthy run: they describe Ray's own
# internals, not the run, so they count as INFO (shown with --verbose). Each entry is the
# fragments that must all appear, with its reason.
_ROUTINE: tuple[tuple[str, ...], ...] = (
    # Ray Train's PreemptionWatcher actor is created with max_restarts > 0 and its arguments
    # in the object store; the core worker logs an ERROR about that on every run.
    ("has constructor arguments in the object store and max_restarts > 0",),
    # At the end of a run the GCS kills the train actors; a worker that has already exited
    # closes the socket first, and the GCS logs the failed (and needless) kill as an ERROR.
    ("Failed to kill actor", "KillActor RPC failed", "Socket closed"),
)


_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "During handling of the above exception",
    "The above exception was the direct cause",
)


@dataclass(frozen=True)
class Line:
    """One forwarded line, classified."""

    text: str
    level: int | None  # None: no level of its own (continues the line before, or Ray's chatter)
    raysight: bool  # written by a raysight logger (text or JSON format)


def classify(text: str) -> Line:
    """Tell whose line `text` is and at which level it was written."""
    if text.startswith('{"time"'):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and str(entry.get("logger", "")).startswith("raysight"):
            return Line(text, _LEVELS.get(str(entry.get("level", "")).upper()), raysight=True)
    match = _RAYSIGHT_TEXT.match(text)
    if match:
        return Line(text, _LEVELS[match.group(1)], raysight=True)
    for pattern in _RAY_FORMATS:
        match = pattern.match(text)
        if match:
            word = match.group(1)
            level = logging.WARNING if word == "Warning" else _LEVELS[word]
            if level >= logging.WARNING and _routine(text):
                level = logging.INFO
            return Line(text, level, raysight=False)
    return Line(text, None, raysight=False)


def _routine(text: str) -> bool:
    """Whether `text` is one of Ray's routine warning- or error-level lines."""
    return any(all(part in text for part in parts) for parts in _ROUTINE)


def select(lines: Iterable[str], threshold: int) -> list[Line]:
    """The lines of one forwarded batch worth showing at `threshold` (a logging level).

    A record's continuation (indented lines, a traceback up to its exception line) goes
    with it; a traceback on its own counts as an error. Any other line without a level
    is Ray's chatter, shown only at DEBUG.
    """
    kept: list[Line] = []
    keep = False  # whether the record being read is shown
    in_traceback = False
    for text in lines:
        line = classify(text)
        if line.level is None and text.startswith(_TRACEBACK):
            keep = keep or threshold <= logging.ERROR
            in_traceback = True
        elif line.level is None and (in_traceback or _continues(text)):
            if in_traceback and not _continues(text):
                in_traceback = False  # "SomeError: message" closes the traceback
        elif line.level is None and text.startswith(_CHAINED):
            in_traceback = False  # between two tracebacks of one chain
        elif line.level is None:
            keep, in_traceback = threshold <= logging.DEBUG, False
        else:
            shown = line.level >= threshold and (line.raysight or line.level >= logging.WARNING)
            keep, in_traceback = shown or threshold <= logging.DEBUG, False
        if keep:
            kept.append(line)
    return kept


def _continues(text: str) -> bool:
    """An indented or empty line: part of the record above it."""
    return not text or text[0].isspace()


def to_json(line: Line, source: str) -> str:
    """A kept line as one JSON object; raysight's JSON lines pass through unchanged."""
    if line.raysight and line.text.startswith("{"):
        return line.text
    level = logging.getLevelName(line.level if line.level is not None else logging.INFO)
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "level": str(level).lower(),
            "logger": "raysight" if line.raysight else "ray",
            "source": source,
            "message": line.text,
        }
    )


class WorkerLines:
    """Ray's log-forwarding handler, replaced by one that filters and formats.

    `ray_print` is Ray's own printer (`print_to_stdstream(data, ignore_prefix)`), which adds
    the `(Actor pid=N)` prefix and folds lines repeated across workers.
    """

    def __init__(
        self,
        threshold: int,
        json_lines: bool,
        ray_print: Callable[[dict[str, Any], bool], None],
        ignore_prefix: bool,
    ) -> None:
        self._threshold = threshold
        self._json = json_lines
        self._ray_print = ray_print
        self._ignore_prefix = ignore_prefix

    def __call__(self, data: dict[str, Any]) -> None:
        if self._threshold <= logging.DEBUG and not self._json:
            self._ray_print(data, self._ignore_prefix)
            return
        kept = select(data.get("lines", []), self._threshold)
        if not kept:
            return
        if self._json:
            sink = sys.stderr if data.get("is_err") else sys.stdout
            source = _source(data)
            sink.write("".join(to_json(line, source) + "\n" for line in kept))
            sink.flush()
            return
        # raysight's own worker lines read like the driver's: no "(RayTrainWorker pid=N)".
        ours = [line.text for line in kept if line.raysight]
        theirs = [line.text for line in kept if not line.raysight]
        if ours:
            self._ray_print({**data, "lines": ours}, True)
        if theirs:
            self._ray_print({**data, "lines": theirs}, self._ignore_prefix)


def _source(data: dict[str, Any]) -> str:
    name = data.get("actor_name") or data.get("task_name") or ""
    return f"{name} pid={data.get('pid')}".strip()


def route_worker_lines(threshold: int, json_lines: bool) -> None:
    """Put a `WorkerLines` filter in place of Ray's printer, in this (driver) process.

    Call after `ray.init(log_to_driver=True)`. Ray's printer lives in a private module; if
    it has moved, forwarded lines stay as Ray prints them and a debug line says so.
    """
    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
        printer = WorkerLines(threshold, json_lines, ray_worker.print_to_stdstream, ignore_prefix)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", printer)
    except (ImportError, AttributeError, KeyError):
        logger.debug("Ray's log forwarding is not where expected; lines stay unfiltered")
