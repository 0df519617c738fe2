"""The console filter for lines Ray forwards from its processes, on lines Ray really writes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from raysight.console import WorkerLines, classify, select, to_json

# As forwarded from a 2-worker digits run (Ray 2.60), without Ray's "(Actor pid=N)" prefix.
RAYSIGHT_EPOCH = (
    "2026-11-29 16:11:32,033 INFO epoch 1/4  loss 2.1738  acc 0.2250  val_loss 1.4186  "
    "val_acc 0.5694  1744 samples/s  0.7s  ~2s left"
)
RAYSIGHT_JSON = json.dumps(
    {"time": "2026-11-29T16:11:32.033Z", "level": "info", "logger": "raysight.train.loop",
     "message": "epoch 1/4"}
)  # fmt: skip
TRAIN_REPORT = (
    "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'epoch': 1}, "
    "validation=False) from rank 1"
)
CHECKPOINT_CREATED = "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x)"
PREEMPTION = (
    "[2026-11-29 16:11:27,233 E 2504 2537] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: 'c7eb' has constructor arguments in the object store and "
    "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail."
)
KILL_RACE = (
    "[2026-11-29 21:34:12,974 E 14528 14528] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
    "kill actor 0a507b106235dabeeb2a06d304000000, return status: Invalid: KillActor RPC failed "
    "for actor 0a507b106235dabeeb2a06d304000000: RpcError: RPC error: Socket closed rpc_code: 14"
)
KILL_FAILED = (
    "[2026-11-29 21:34:12,974 E 14528 14528] gcs_actor_scheduler.cc:538: Failed to kill actor "
    "0a50, return status: Invalid: KillActor RPC failed for actor 0a50: deadline exceeded"
)
GLOG_ERROR = "[2026-11-29 16:11:27,233 E 2504 2537] core_worker.cc:99: Failed to connect to GCS"
RAY_PY_WARNING = "2026-11-29 16:12:13,002\tWARNING worker.py:85 -- object store is full"
RAY_PY_INFO = "2026-11-29 16:12:18,655\tINFO worker.py:2029 -- Started a local Ray instance."
SERVE_INFO = "INFO 2026-11-29 16:12:30,101 serve 4242 -- Deploying app 'raysight'."
PY_WARNING = "/x/torch/nn/modules/conv.py:456: UserWarning: Using padding='same' with even kernel"


@pytest.mark.parametrize(
    ("text", "level", "ours"),
    [
        (RAYSIGHT_EPOCH, logging.INFO, True),
        (RAYSIGHT_JSON, logging.INFO, True),
        (TRAIN_REPORT, None, False),
        (CHECKPOINT_CREATED, None, False),
        (PREEMPTION, logging.INFO, False),  # Ray's routine ERROR, demoted
        (KILL_RACE, logging.INFO, False),  # the worker had already exited: routine
        (KILL_FAILED, logging.ERROR, False),  # a kill that really failed stays an error
        (GLOG_ERROR, logging.ERROR, False),
        (RAY_PY_WARNING, logging.WARNING, False),
        (RAY_PY_INFO, logging.INFO, False),
        (SERVE_INFO, logging.INFO, False),
        (PY_WARNING, logging.WARNING, False),
    ],
)
def test_classify_tells_whose_line_and_its_level(text: str, level: int | None, ours: bool) -> None:
    line = classify(text)
    assert (line.level, line.raysight) == (level, ours)


def test_default_keeps_raysight_lines_and_real_warnings_only() -> None:
    batch = [
        RAYSIGHT_EPOCH,
        CHECKPOINT_CREATED,
        TRAIN_REPORT,
        PREEMPTION,
        RAY_PY_INFO,
        SERVE_INFO,
        RAY_PY_WARNING,
        GLOG_ERROR,
        PY_WARNING,
    ]
    kept = [line.text for line in select(batch, logging.INFO)]
    assert kept == [RAYSIGHT_EPOCH, RAY_PY_WARNING, GLOG_ERROR, PY_WARNING]


def test_quiet_keeps_warnings_and_errors_only() -> None:
    warning = "2026-11-29 16:11:32,033 WARNING val split is empty"
    kept = [line.text for line in select([RAYSIGHT_EPOCH, warning, GLOG_ERROR], logging.WARNING)]
    assert kept == [warning, GLOG_ERROR]


def test_verbose_keeps_everything() -> None:
    batch = [TRAIN_REPORT, RAYSIGHT_EPOCH, PREEMPTION, CHECKPOINT_CREATED]
    assert [line.text for line in select(batch, logging.DEBUG)] == batch


def test_a_traceback_goes_with_the_line_it_follows() -> None:
    batch = [
        "2026-11-29 16:11:32,033 ERROR step failed",
        "Traceback (most recent call last):",
        '  File "loop.py", line 3, in step',
        "RuntimeError: boom",
        RAY_PY_INFO,
        "  a continuation of Ray's info line",
    ]
    assert [line.text for line in select(batch, logging.INFO)] == batch[:4]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(self, data: dict[str, Any], ignore_prefix: bool) -> None:
        self.calls.append((list(data["lines"]), ignore_prefix))


def _batch(*lines: str) -> dict[str, Any]:
    return {"lines": list(lines), "pid": 2613, "actor_name": "RayTrainWorker", "is_err": True}


def test_text_mode_prints_raysight_lines_without_ray_prefix() -> None:
    recorder = _Recorder()
    printer = WorkerLines(logging.INFO, False, recorder, ignore_prefix=False)
    printer(_batch(RAYSIGHT_EPOCH, TRAIN_REPORT, GLOG_ERROR))
    printer(_batch(TRAIN_REPORT, CHECKPOINT_CREATED))  # nothing to show: Ray is not called
    assert recorder.calls == [([RAYSIGHT_EPOCH], True), ([GLOG_ERROR], False)]


def test_verbose_text_mode_hands_the_batch_to_ray_unchanged() -> None:
    recorder = _Recorder()
    WorkerLines(logging.DEBUG, False, recorder, ignore_prefix=False)(_batch(TRAIN_REPORT))
    assert recorder.calls == [([TRAIN_REPORT], False)]


def test_json_mode_prints_one_object_per_kept_line(capsys: pytest.CaptureFixture[str]) -> None:
    recorder = _Recorder()
    printer = WorkerLines(logging.INFO, True, recorder, ignore_prefix=False)
    printer(_batch(RAYSIGHT_JSON, TRAIN_REPORT, RAY_PY_WARNING))
    lines = capsys.readouterr().err.splitlines()
    assert recorder.calls == []
    assert lines[0] == RAYSIGHT_JSON
    wrapped = json.loads(lines[1])
    assert wrapped["level"] == "warning"
    assert wrapped["logger"] == "ray"
    assert wrapped["source"] == "RayTrainWorker pid=2613"
    assert wrapped["message"] == RAY_PY_WARNING
    assert len(lines) == 2


def test_to_json_gives_unlevelled_lines_info() -> None:
    line = classify("plain text")
    assert json.loads(to_json(line, "x pid=1"))["level"] == "info"


def test_a_traceback_on_its_own_is_an_error() -> None:
    batch = [
        TRAIN_REPORT,
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in <module>',
        "ValueError: first",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "b.py", line 2, in <module>',
        "KeyError: 'second'",
        CHECKPOINT_CREATED,
    ]
    assert [line.text for line in select(batch, logging.WARNING)] == batch[1:10]
