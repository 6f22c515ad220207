"""What checking every image before training costs (`srn_hf.data.verify.check_images`), against reading the files
and against one training epoch's decoding, on COCO-sized (640 x 480) JPEG photos.

    python benchmarks/benchmark_verify.py                     # 10,000 photos, 2 worker processes
    python benchmarks/benchmark_verify.py --images 200        # a smoke run

Every pass runs over the same files, already in the page cache (they were just written), with the same number of
worker processes, in this one process:

    read           the bytes of every file (`Path.read_bytes`)
    headers        `PIL.Image.open` and the size: a header check, which lets truncated JPEGs through
    check_images   the check itself: a full decode, JPEGs at 1/8 scale (Pillow's `draft`), progress bar included
    full decode    `PIL.Image.open(...).load()` at full size: what a training epoch decodes
    training epoch the training data loader's work per image (decode, multi-scale crop, flip, to tensor), on
                   `--epoch-images` of the photos

Writes `benchmarks/results/verify_images.json` and `verify_images.md` (`--output-dir` to change).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_srn import write_photos  # noqa: E402
from benchmark_utils import machine_description  # noqa: E402
from probes import seconds_of  # noqa: E402


def read_file(path: str) -> int:
    return len(Path(path).read_bytes())


def read_header(path: str) -> tuple[int, int]:
    with Image.open(path) as picture:
        return picture.size


def decode_full(path: str) -> tuple[int, int]:
    with Image.open(path) as picture:
        picture.load()
        return picture.size


def pool_pass(function, paths: list[str], workers: int) -> None:
    with multiprocessing.Pool(workers) as pool:
        for _ in pool.imap_unordered(function, paths, chunksize=16):
            pass


def dataset_of(paths: list[str]):
    """A one-split multi-label DatasetDict over the photos (one placeholder label each)."""
    from datasets import Dataset, DatasetDict

    from srn_hf.data.common import multilabel_features

    columns = {"image": paths, "labels": [[0]] * len(paths), "image_id": [Path(path).stem for path in paths]}
    return DatasetDict({"train": Dataset.from_dict(columns, features=multilabel_features(["object"]))})


def training_epoch(paths: list[str], workers: int) -> None:
    """One pass of the training DataLoader (srn_hf.data.transforms, 224 x 224, multi-scale crops) over `paths`."""
    import torch

    from srn_hf.data.transforms import collate_multilabel, with_multilabel_transforms

    dataset = with_multilabel_transforms(dataset_of(paths), image_size=224)["train"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate_multilabel)
    for _ in loader:
        pass


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="photos checked (default: 10,000)")
    parser.add_argument("--epoch-images", type=int, default=2_000, help="photos of the training-epoch pass")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every pass (default: 2)")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)

    from srn_hf.data.verify import check_images

    with tempfile.TemporaryDirectory(prefix="srn-verify-") as directory:
        paths = write_photos(Path(directory), args.images)
        megabytes = sum(Path(path).stat().st_size for path in paths) / 1e6
        dataset = dataset_of(paths)
        seconds = {
            "read": seconds_of(pool_pass, read_file, paths, args.workers),
            "headers": seconds_of(pool_pass, read_header, paths, args.workers),
            "check_images": seconds_of(check_images, dataset, "stop", args.workers),
            "full_decode": seconds_of(pool_pass, decode_full, paths, args.workers),
        }
        epoch_paths = paths[: args.epoch_images]
        epoch_seconds = seconds_of(training_epoch, epoch_paths, args.workers)
    per_image_ms = {name: 1000 * value / len(paths) for name, value in seconds.items()}
    per_image_ms["training_epoch"] = 1000 * epoch_seconds / len(epoch_paths)
    results = {
        "images": len(paths),
        "image_size": [640, 480],
        "megabytes": round(megabytes, 1),
        "workers": args.workers,
        "epoch_images": len(epoch_paths),
        "seconds": seconds,
        "ms_per_image": per_image_ms,
        "check_over_read": seconds["check_images"] / seconds["read"],
        "check_over_full_decode": seconds["check_images"] / seconds["full_decode"],
        "check_over_training_epoch": per_image_ms["check_images"] / per_image_ms["training_epoch"],
        "machine": machine_description(),
    }
    write_results(results, Path(args.output_dir))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    rows = [
        f"Checking {results['images']:,} JPEG photos of {results['image_size'][0]} x {results['image_size'][1]} "
        f"({results['megabytes']:.0f} MB, in the page cache), {results['workers']} worker processes each pass.",
        "",
        "| pass | seconds | ms per image |",
        "|---|---|---|",
    ]
    for name, value in results["seconds"].items():
        rows.append(f"| {name} | {value:.1f} | {results['ms_per_image'][name]:.2f} |")
    rows.append(
        f"| training epoch ({results['epoch_images']:,} images) | | {results['ms_per_image']['training_epoch']:.2f} |"
    )
    rows += [
        "",
        f"check_images / read: {results['check_over_read']:.1f}; "
        f"/ full-size decode: {results['check_over_full_decode']:.2f}; "
        f"/ one training epoch of the same images: {results['check_over_training_epoch']:.2f}",
    ]
    return "\n".join(rows)


def write_results(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "verify_images.json").write_text(json.dumps(results, indent=2))
    (output_dir / "verify_images.md").write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()
