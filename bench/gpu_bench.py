"""GPU benchmark: raysight's engine and server on a CUDA device.

For a machine with a GPU; on one without, it says so and exits. Two parts, each written
to its own section of --out:

1. The engine's batched forward (`ServedModel.run` on normalised FP32 inputs and
   `Engine.classify_pixels` on raw UINT8 pixels) for ResNet-18 at 32x32 and at 224x224,
   in fp32 and bf16 (autocast; BatchNorm stays fp32), at several batch sizes.
2. The serving bench (bench/serve_bench.py) against `raysight serve --device cuda
   --num-gpus 1`, beside the bare server and the bare server running the engine on the
   GPU, with the 32x32 checkpoint.

The checkpoints hold seeded random weights: speed does not depend on what the weights
learnt, and the bench then needs no dataset.

    python bench/gpu_bench.py [--out docs/benchmarks.md] [--duration 3] [--skip-server]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import report
import serve_bench
import torch
from servers.engine import measure

from raysight.checkpoint import Manifest, Preprocessing, save_checkpoint
from raysight.models import build_model, resolve_kwargs
from raysight.serve.model import load_served_model

REPO = Path(__file__).resolve().parents[1]
SECTION = "gpu_bench"
MODEL = "resnet18"
# Batch sizes per input size: a 224x224 CIFAR-style ResNet-18 (3x3 stem, no early
# downsampling) costs about 49 times the compute of a 32x32 one per image.
BATCHES = {32: (1, 8, 32, 128, 512), 224: (1, 8, 32, 64)}
DTYPES = ("fp32", "bf16")
NUM_CLASSES = 10


def random_checkpoint(directory: Path, size: int) -> Path:
    """A ResNet-18 checkpoint for 3 x size x size inputs with seeded random weights."""
    kwargs = resolve_kwargs(MODEL, in_channels=3, num_classes=NUM_CLASSES, image_size=(size, size))
    torch.manual_seed(0)
    model = build_model(MODEL, **kwargs)
    manifest = Manifest.new(
        model=MODEL,
        model_kwargs=kwargs,
        input_shape=(3, size, size),
        preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        class_names=[str(i) for i in range(NUM_CLASSES)],
        dataset=f"random{size}",
        metrics={},
        train_config={},
        epoch=0,
    )
    return save_checkpoint(
        directory / f"{MODEL}-{size}", state_dict=model.state_dict(), manifest=manifest
    )


def gpu_facts() -> dict[str, str]:
    """The device, its memory, and the CUDA versions torch and the driver report."""
    properties = torch.cuda.get_device_properties(0)
    driver = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "GPU": f"{torch.cuda.device_count()} x {properties.name}",
        "GPU memory": f"{properties.total_memory / 2**30:.0f} GiB",
        "CUDA (torch)": str(torch.version.cuda),
        "driver": driver or "?",
    }


def engine_section(checkpoints: dict[int, Path], duration_s: float, command: str) -> str:
    """Measure every (size, dtype, path, batch) and lay the numbers out as a section."""
    rows = []
    for size, checkpoint in checkpoints.items():
        model = load_served_model(str(checkpoint), "", "cuda")
        for dtype in DTYPES:
            for row in measure(model, list(BATCHES[size]), duration_s, dtype):
                rows.append([f"{size}x{size}", dtype, row["path"], row["batch"], row])
                print(
                    f"{size}x{size} {dtype} {row['path']:13s} batch {row['batch']:<4d} "
                    f"{row['images_per_s']:10.1f} images/s",
                    flush=True,
                )
        del model
        torch.cuda.empty_cache()
    table = report.table(
        ["input", "dtype", "path", "batch", "images/s", "ms per batch"],
        [
            [
                size,
                dtype,
                path,
                batch,
                report.number(r["images_per_s"]),
                report.milliseconds(r["ms_per_batch"]),
            ]
            for size, dtype, path, batch, r in rows
        ],
    )
    facts = {**report.machine_facts(REPO), **gpu_facts()}
    return "\n".join(
        [
            "## GPU: the engine's batched forward",
            "",
            "```bash",
            command,
            "```",
            "",
            f"ResNet-18 (CIFAR-style: 3x3 stem, no early downsampling) with seeded random "
            f"weights, {NUM_CLASSES} classes, on one GPU. `fp32-inputs` is `ServedModel.run` "
            "(normalised FP32 copied to the device, logits and probabilities back), as the "
            "replica runs it; `uint8-pixels` is `Engine.classify_pixels` (raw pixels, "
            "normalised on the device). bf16 runs under autocast. Each figure: "
            f"{duration_s:g} s after 3 warm-up batches, synchronised with the device.",
            "",
            report.facts_table(facts),
            "",
            table,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--plots", default="docs/plots/gpu")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the server bench")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--skip-server", action="store_true", help="only the engine part")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "no CUDA device: torch sees no GPU here (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}). Run this on a "
            "machine with an NVIDIA GPU and a CUDA build of torch."
        )
        return 2
    command = shlex.join(["python", "bench/gpu_bench.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="raysight-gpu-bench-") as tmp:
        checkpoints = {size: random_checkpoint(Path(tmp), size) for size in BATCHES}
        section = engine_section(checkpoints, args.duration, command)
        report.write_section(Path(args.out), SECTION, section, "bench/gpu_bench.py")
        print(f"wrote {args.out} (section {SECTION})")
        if args.skip_server:
            return 0
        return serve_bench.main(
            [
                "--checkpoint",
                str(checkpoints[32]),
                "--device",
                "cuda",
                "--servers",
                "raysight,bare,bare+engine",
                "--workloads",
                "oip-fp32-1,oip-fp32-8,oip-uint8-8,classify-png",
                "--concurrency",
                args.concurrency,
                "--rounds",
                str(args.rounds),
                "--duration",
                str(args.duration),
                "--out",
                args.out,
                "--plots",
                args.plots,
                "--section",
                "gpu_serve_bench",
                "--title",
                "GPU: serving ResNet-18 at 32x32 on one GPU",
            ],
            command=command,
            writer="bench/gpu_bench.py",
        )


if __name__ == "__main__":
    sys.exit(main())
