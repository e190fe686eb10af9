"""Make src/expkit/samples/fashion_mnist_sample.npz from the original Fashion-MNIST IDX files.

    python scripts/make_sample.py [--source /usr/share/datasets/fashion-mnist]

Takes the first 400 training images of each class and the first 100 test images of each class,
keeping file order, and saves them (uint8) with np.savez_compressed. The default source is Debian's
`dataset-fashion-mnist` package. The output is the same bytes on every run for the same input.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from expkit.data.formats import idx_file, read_idx  # noqa: E402

PER_CLASS = {"train": 400, "t10k": 100}
OUTPUT = ROOT / "src" / "expkit" / "samples" / "fashion_mnist_sample.npz"


def first_per_class(y: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of every class, in file order."""
    picked = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])
    counts = np.bincount(y[picked])
    if counts.min() < per_class:
        raise SystemExit(f"a class has only {counts.min()} examples, fewer than {per_class}")
    return np.sort(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    arrays = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        files = [idx_file(args.source, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        if None in files:
            raise SystemExit(f"{args.source}: the {prefix} IDX files are missing (apt-get install dataset-fashion-mnist)")
        for f in files:
            print(f"{f.name}  sha256 {hashlib.sha256(f.read_bytes()).hexdigest()}")
        x, y = read_idx(files[0]), read_idx(files[1])
        keep = first_per_class(y, PER_CLASS[prefix])
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[keep].astype(np.uint8), y[keep].astype(np.uint8)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    # Zip entries carry a timestamp: pin it, so the file is byte-for-byte reproducible (and deflate harder).
    _pin_zip_dates(args.output)
    for key, value in arrays.items():
        print(f"{key}: {value.shape} {value.dtype}")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


def _pin_zip_dates(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for info, data in members:
            info.date_time = (1980, 1, 1, 0, 0, 0)
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(path)


if __name__ == "__main__":
    main()
