"""Time to accuracy: one `raysight train` run on CIFAR-10 (the shared JPEG folders), timed
from the start of training to each epoch's validation accuracy, then the test accuracy.

The run is the real command, on a local Ray cluster, its JSON log lines read as they come;
the clock starts when training starts (after the data is indexed and decoded) and each
epoch's time is when its line was logged. Validation is the 10% held out of train/; the
test split is scored once, at the end.

    python bench/time_to_accuracy.py --name cpu [--targets 0.7 0.8] -- \
        --model resnet9 --model-arg width=16 --epochs 8
    python bench/time_to_accuracy.py --name gpu --targets 0.93 -- \
        --model resnet9 --gpu --workers 1 --epochs 12 --batch-size 512   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

from report import machine_facts, table, write_section

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10" / "cifar10-jpeg.tar.gz"
_EPOCH = re.compile(r"^epoch (\d+)/(\d+) .*val_acc ([\d.]+)\s+([\d,]+) samples/s")
_FINAL = re.compile(r"(test|validation) accuracy ([\d.]+) on (\d+) images")


def _stamp(line: dict[str, str]) -> float:
    return datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()


def run(flags: list[str], workdir: Path) -> tuple[list[tuple[int, float, float, int]], str]:
    """Train; returns (epoch, seconds since training started, val accuracy, samples/s) per
    epoch and the final accuracy line."""
    with tarfile.open(CIFAR) as archive:
        archive.extractall(workdir, filter="data")
    command = [
        str(REPO / ".venv" / "bin" / "raysight"),
        "train",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(workdir / "jpeg"),
        "--image-size",
        "32",
        "32",
        "--output",
        str(workdir / "checkpoint"),
        "--storage-path",
        str(workdir / "ray"),
        *flags,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=workdir)
    assert process.stderr is not None
    start, epochs, final = 0.0, [], ""
    for text in process.stderr:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        message = str(line.get("message", ""))
        if message.startswith("training "):
            start = _stamp(line)
        elif (found := _EPOCH.match(message)) is not None:
            epoch, _, accuracy, rate = found.groups()
            seconds = _stamp(line) - start
            epochs.append((int(epoch), seconds, float(accuracy), int(rate.replace(",", ""))))
            print(f"epoch {epoch}: {seconds:.0f}s val_acc {accuracy}", flush=True)
        elif (done := _FINAL.search(message)) is not None:
            final = f"{done.group(1)} accuracy {float(done.group(2)):.4f} on {done.group(3)}"
    if process.wait() != 0:
        sys.exit(f"raysight train failed ({process.returncode})")
    return epochs, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the section's name, e.g. cpu or gpu")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.8])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then raysight train flags")
    args = parser.parse_args()
    flags = [f for f in args.flags if f != "--"]
    if not CIFAR.exists():
        sys.exit(f"no CIFAR-10 JPEG set at {CIFAR}")
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        epochs, final = run(flags, Path(tmp))
    reached = [
        f"{target:.0%}: " + next((f"{s:.0f} s (epoch {e})" for e, s, a, _ in epochs if a >= target),
                                 "not reached")
        for target in args.targets
    ]  # fmt: skip
    facts = machine_facts(REPO)
    command = "python bench/time_to_accuracy.py --name {} --targets {} -- {}".format(
        args.name, " ".join(str(t) for t in args.targets), " ".join(flags)
    )
    rows = [[e, f"{s:.0f}", f"{a:.4f}", f"{r:,}"] for e, s, a, r in epochs]
    section = "\n\n".join(
        [
            f"## CIFAR-10 time to accuracy ({args.name})",
            f"Command: `{command}` ({facts['date']}, commit {facts['raysight commit']}, "
            f"{facts['CPU']}). The shared JPEG set (lossy re-encodes of the 32x32 images), "
            "45,000 training images, 5,000 held out for validation, 10,000 test images. "
            "Seconds count from the start of training.",
            f"Time to validation accuracy: {'; '.join(reached)}. Final: {final}.",
            table(["epoch", "seconds", "val accuracy", "samples/s"], rows),
        ]
    )
    write_section(args.out, f"time_to_accuracy_{args.name}", section, "bench/time_to_accuracy.py")
    print(section)


if __name__ == "__main__":
    main()
