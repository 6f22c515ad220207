"""The engines of bulk tagging compared on one machine: `srn-hf predict` in one process, in two processes under
`accelerate launch`, and with `--engine ray` at one and at two actors; same model, batch size and images.

```bash
python benchmarks/benchmark_bulk_ray.py --images 2000 --output-dir benchmarks/results/bulk_ray
python benchmarks/benchmark_bulk_ray.py --model outputs/demo/final --images 2000   # a trained model folder
```

Each engine runs the real command over the same JPEGs into a fresh output. Per engine: images/s over the whole
command (start-up included), images/s after its first row (the steady rate), the time to the first row, and the
peak resident memory (RSS) of each tagging process (one-process and accelerate: each predict process without its
DataLoader workers; Ray: each actor). Ratios are to the one-process engine of the same run: on a shared machine
only the ratios of one run compare. Without `--model`, an untrained SRN on tf_efficientnet_lite0 at
`--image-size` (tagging speed does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20
ENGINES = ("local", "accelerate2", "ray1", "ray2")


def write_photos(folder: Path, count: int, size: tuple[int, int] = (320, 240)) -> None:
    """`count` JPEGs of smooth random colour fields (photo-like to the JPEG codec)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        cells = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(cells).resize(size, Image.BILINEAR).save(folder / f"photo{index:05d}.jpg", quality=90)


def untrained_model(folder: Path, image_size: int, num_labels: int) -> Path:
    import srn_hf
    from srn_hf.processing import create_image_processor

    labels = {index: f"label{index}" for index in range(num_labels)}
    config = srn_hf.SRNConfig(backbone="tf_efficientnet_lite0", id2label=labels, image_size=image_size)
    model = srn_hf.SRNForImageClassification(config).eval()
    model.save_pretrained(folder)
    create_image_processor(model.config).save_pretrained(folder)
    return folder


def engine_command(engine: str, model: str, photos: Path, output: Path, batch_size: int) -> list[str]:
    predict = ["-m", "srn_hf.cli", "predict", model, str(photos), "--output", str(output)]
    predict += ["--batch-size", str(batch_size)]
    if engine == "local":
        return [sys.executable, *predict]
    if engine == "accelerate2":
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        return [sys.executable, *launch, "--mixed_precision", "no", "--dynamo_backend", "no", *predict]
    actors = engine.removeprefix("ray")
    cpus = str(os.cpu_count() // int(actors))  # every core in use, as the other engines' threads use them
    return [sys.executable, *predict, "--engine", "ray", "--num-actors", actors, "--cpus-per-actor", cpus]


def rows_written(output: Path) -> bool:
    """Whether a first record is on disk: a JSONL line (OUTPUT or its parts) or a parquet file of Ray's folder."""
    if output.is_dir():
        return any(output.glob("*.parquet"))
    parts = output.with_name(output.name + ".parts")
    files = [output] + (list(parts.glob("*.jsonl")) if parts.is_dir() else [])
    return any(file.is_file() and file.stat().st_size > 0 for file in files)


def tagging_processes(root) -> list:
    """The processes that tag: Ray's actors, else the predict processes (not their DataLoader workers)."""
    tree = [root, *root.children(recursive=True)]
    names = {process.pid: " ".join(process.cmdline()) for process in tree if process.is_running()}
    marker = "MapWorker" if any("MapWorker" in name for name in names.values()) else "srn_hf.cli predict"
    taggers = {pid for pid, name in names.items() if marker in name}
    # a DataLoader worker is forked with its process's command line: counted with it, not as a tagger
    return [process for process in tree if process.pid in taggers and process.ppid() not in taggers]


def watch(process: subprocess.Popen, output: Path, found: dict, stop: threading.Event) -> None:
    """Every 0.2 s: the time of the first row, and each tagging process's peak RSS."""
    import psutil

    root = psutil.Process(process.pid)
    while not stop.wait(0.2):
        if "first_row" not in found and rows_written(output):
            found["first_row"] = time.monotonic()
        try:
            for tagger in tagging_processes(root):
                peak = found.setdefault("rss", {})
                peak[tagger.pid] = max(peak.get(tagger.pid, 0), tagger.memory_info().rss)
        except psutil.Error:
            continue


def count_rows(output: Path) -> int:
    import pyarrow.parquet as pq

    if output.suffix == ".parquet":
        return pq.read_metadata(output).num_rows if output.is_file() else pq.read_table(output).num_rows
    return sum(1 for line in output.read_text(encoding="utf-8").splitlines() if line.strip())


def run_engine(engine: str, model: str, photos: Path, folder: Path, images: int, batch_size: int) -> dict:
    output = folder / f"{engine}.{'parquet' if engine.startswith('ray') else 'jsonl'}"
    command = engine_command(engine, model, photos, output, batch_size)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    found, stop = {}, threading.Event()
    start = time.monotonic()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch, args=(process, output, found, stop), daemon=True)
    watcher.start()
    _, err = process.communicate()
    end = time.monotonic()
    stop.set()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{engine}: {' '.join(command)} failed ({process.returncode}): {err[-2000:]}")
    rows = count_rows(output)
    if rows != images:
        raise SystemExit(f"{engine}: {rows} rows for {images} images")
    first_row = found.get("first_row", end) - start
    rss = sorted(found.get("rss", {}).values())
    return {
        "engine": engine,
        "seconds": round(end - start, 2),
        "images_per_s": round(images / (end - start), 2),
        "steady_images_per_s": round(images / max(end - start - first_row, 1e-6), 2),
        "first_row_s": round(first_row, 2),
        "taggers": len(rss),
        "rss_mib_per_tagger": round(max(rss) / MIB, 1) if rss else None,
    }


def markdown(results: dict) -> str:
    rows = results["engines"]
    local = next(row for row in rows if row["engine"] == "local")
    lines = [
        f"{results['images']} JPEGs (320 x 240), {results['model']}, batch size {results['batch_size']}, "
        f"{results['cpus']} CPUs; ratios to the one-process engine of this run.",
        "",
        "| engine | images/s | ratio | images/s after the first row | ratio | first row (s) "
        "| peak RSS of a tagger (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['engine']} | {row['images_per_s']} | {row['images_per_s'] / local['images_per_s']:.2f} | "
            f"{row['steady_images_per_s']} | {row['steady_images_per_s'] / local['steady_images_per_s']:.2f} | "
            f"{row['first_row_s']} | {row['rss_mib_per_tagger']} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an SRN model folder (default: an untrained tf_efficientnet_lite0 SRN)")
    parser.add_argument("--image-size", type=int, default=192, help="the untrained model's input side (default 192)")
    parser.add_argument("--num-labels", type=int, default=20, help="the untrained model's labels (default 20)")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to tag (default 2000)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"a comma list of {', '.join(ENGINES)}")
    parser.add_argument("--output-dir", default="benchmarks/results/bulk_ray", help="where the tables are written")
    args = parser.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown or args.images < 1 or args.batch_size < 1:
        parser.error(f"--engines are {', '.join(ENGINES)}; --images and --batch-size at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bulk-ray-"))
    try:
        photos = work / "photos"
        write_photos(photos, args.images)
        model = args.model or os.fspath(untrained_model(work / "model", args.image_size, args.num_labels))
        described = args.model or f"untrained SRN tf_efficientnet_lite0 at {args.image_size} px"
        results = {"images": args.images, "batch_size": args.batch_size, "model": described, "cpus": os.cpu_count()}
        results["engines"] = [
            run_engine(engine, model, photos, work, args.images, args.batch_size) for engine in args.engines.split(",")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "bulk_ray_results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = markdown(results) if any(row["engine"] == "local" for row in results["engines"]) else ""
    (output_dir / "bulk_ray_results.md").write_text(table, encoding="utf-8")
    print(table or json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
