"""Cut a small two-class photo folder in the book's layout from the CIFAR-10 JPEG set.

train/ takes the first N images of each class from CIFAR-10's training split; validation/
and test/ split that class's test images in two halves, so a model pretrained on CIFAR-10's
training split never saw an image it is validated or tested on.

    python bench/cut_pets.py --cifar /tmp/c10/jpeg --out /tmp/pets [--per-class 1000]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def cut(cifar: Path, out: Path, classes: tuple[str, ...], per_class: int) -> dict[str, int]:
    """Copy the files; returns images per split folder."""
    counts: dict[str, int] = {}
    for name in classes:
        train = sorted((cifar / "train" / name).glob("*.jpg"))[:per_class]
        test = sorted((cifar / "test" / name).glob("*.jpg"))
        half = len(test) // 2
        for split, files in (("train", train), ("validation", test[:half]), ("test", test[half:])):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, folder / path.name)
            counts[split] = counts.get(split, 0) + len(files)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, required=True, help="the extracted jpeg/ folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", nargs="+", default=["cat", "dog"])
    parser.add_argument("--per-class", type=int, default=1000, help="training images a class")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; pick a new folder")
    print(cut(args.cifar, args.out, tuple(args.classes), args.per_class))


if __name__ == "__main__":
    main()
