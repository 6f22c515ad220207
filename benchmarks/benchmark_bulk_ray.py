"""The engines of bulk tagging compared on one machine: `srn-hf predict` in one process, in two processes under
`accelerate launch`, and with `--engine ray` at one and at two actors; same model, batch size and images.

```bash
python benchmarks/benchmark_bulk_ray.py --images 2000 --output-dir benchmarks/results/bulk_ray
python benchmarks/benchmark_bulk_ray.py --model outputs/demo/final --images 2000   # a trained model folder
```

Each engine runs the real command over the same JPEGs into a fresh output, the engines in turn, `--rounds` times
(so that a change of the machine's load falls on every engine). Per run: images/s over the whole command (start-up
and shutdown included), the steady rate (the records written from the first seen on disk to the last, over that
time: tagging alone), the time to the first row, the peak resident memory (RSS) of each tagging process
(one-process and accelerate: each predict process without its DataLoader workers; Ray: each actor), the CPU
milliseconds per image of the taggers (with their DataLoader workers) and of every other process of the command (the
driver or `accelerate launch`; Ray's daemons, system actors and write workers), over the whole command and over the
steady window, and the load average when it started. The table shows each engine's best round (another job's load
only slows a run down); the JSON keeps every run. Ratios are to the one-process engine of the same invocation.
Without `--model`, an untrained SRN on tf_efficientnet_lite0 at `--image-size` (tagging speed does not depend on
training).
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
    # the engine's defaults: on a local Ray, N actors share the machine's cores (each its torch threads on them)
    return [sys.executable, *predict, "--engine", "ray", "--num-actors", engine.removeprefix("ray")]


def rows_written(output: Path) -> int:
    """The records on disk: the complete lines of OUTPUT (JSONL) or of its parts, or the rows of the parquet files
    of Ray's folder (a file still being written is not counted)."""
    import pyarrow.parquet as pq

    if output.is_dir():
        rows = 0
        for file in output.glob("*.parquet"):
            try:
                rows += pq.read_metadata(file).num_rows
            except (OSError, ValueError):
                continue
        return rows
    parts = output.with_name(output.name + ".parts")  # while they exist, the merged OUTPUT is not complete
    files = list(parts.glob("*.jsonl")) if parts.is_dir() else [output]
    rows = 0
    for file in files:
        try:
            rows += file.read_bytes().count(b"\n")
        except OSError:
            continue
    return rows


def tagging_processes(root, engine: str) -> list:
    """The processes that tag: Ray's actors (not the driver, a tagger only until they start), else the predict
    processes (not their DataLoader workers)."""
    tree = [root, *root.children(recursive=True)]
    names = {process.pid: " ".join(process.cmdline()) for process in tree if process.is_running()}
    marker = "MapWorker" if engine.startswith("ray") else "srn_hf.cli predict"
    # `accelerate launch ... -m srn_hf.cli predict` starts the predict processes: it does not tag
    taggers = {pid for pid, name in names.items() if marker in name and "accelerate.commands.launch" not in name}
    # a DataLoader worker is forked with its process's command line: counted with it, not as a tagger
    return [process for process in tree if process.pid in taggers and process.ppid() not in taggers]


def add_cpu_seconds(tree: list, taggers: list, cpu: dict) -> None:
    """Each process's CPU seconds so far into `cpu` ((pid, start time) -> (role, seconds)): `tagging` for the
    taggers and their DataLoader workers, `other` for the rest (the driver or `accelerate launch`, Ray's daemons,
    its system actors and the workers of its write tasks)."""
    import psutil

    tagger_pids = {tagger.pid for tagger in taggers}
    for process in tree:
        try:
            times, started = process.cpu_times(), process.create_time()
            role = "tagging" if process.pid in tagger_pids or process.ppid() in tagger_pids else "other"
        except psutil.Error:
            continue
        cpu[(process.pid, started)] = (role, times.user + times.system)


def cpu_by_role(cpu: dict) -> dict[str, float]:
    totals = {"tagging": 0.0, "other": 0.0}
    for role, seconds in cpu.values():
        totals[role] += seconds
    return totals


def watch(engine: str, process: subprocess.Popen, output: Path, found: dict, stop: threading.Event) -> None:
    """Every 0.2 s: the records on disk (`first_row`: the time, count and CPU seconds by role of the first seen;
    `last_row`: of the highest count, when first seen), each tagging process's peak RSS, the CPU seconds of every
    process of the command (`cpu`)."""
    import psutil

    root = psutil.Process(process.pid)
    cpu = found.setdefault("cpu", {})
    while not stop.wait(0.2):
        try:
            tree = [root, *root.children(recursive=True)]
            taggers = tagging_processes(root, engine)
        except psutil.Error:
            continue
        add_cpu_seconds(tree, taggers, cpu)
        rows = rows_written(output)
        if rows and "first_row" not in found:
            found["first_row"] = (time.monotonic(), rows, cpu_by_role(cpu))
        if rows > found.get("last_row", (0, 0))[1]:
            found["last_row"] = (time.monotonic(), rows, cpu_by_role(cpu))
        for tagger in taggers:
            try:
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
    for earlier in folder.glob(f"{engine}.*"):  # an earlier round's output, its meta file and parts
        shutil.rmtree(earlier) if earlier.is_dir() else earlier.unlink()
    command = engine_command(engine, model, photos, output, batch_size)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    found, stop = {}, threading.Event()
    load = os.getloadavg()[0]
    start = time.monotonic()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch, args=(engine, process, output, found, stop), daemon=True)
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
    nothing = (end, 0, cpu_by_role({}))
    (first_time, first_rows, first_cpu), (last_time, last_rows, last_cpu) = (
        found.get("first_row", nothing),
        found.get("last_row", nothing),
    )
    rss = sorted(found.get("rss", {}).values())
    steady_rows = last_rows - first_rows
    whole_cpu = cpu_by_role(found.get("cpu", {}))
    return {
        "engine": engine,
        "load_1min": round(load, 2),
        "seconds": round(end - start, 2),
        "images_per_s": round(images / (end - start), 2),
        # the rows written between the first seen and the last: the tagging alone (no start, no shutdown)
        "steady_images_per_s": round((last_rows - first_rows) / (last_time - first_time), 2)
        if last_rows > first_rows
        else None,
        "first_row_s": round(first_time - start, 2),
        "taggers": len(rss),
        "rss_mib_per_tagger": round(max(rss) / MIB, 1) if rss else None,
        # CPU milliseconds per image of the taggers (with their DataLoader workers) and of every other process
        "cpu_ms_per_image": {role: round(1000 * seconds / images, 1) for role, seconds in whole_cpu.items()},
        "steady_cpu_ms_per_image": {
            role: round(1000 * (last_cpu[role] - first_cpu[role]) / steady_rows, 1) for role in last_cpu
        }
        if steady_rows
        else None,
    }


def best_runs(runs: list[dict]) -> list[dict]:
    """Each engine's run with the highest steady rate (else whole-command rate), in the order the engines ran."""

    def rank(run: dict) -> tuple:
        return run["steady_images_per_s"] or 0, run["images_per_s"]

    best = {}
    for run in runs:
        if run["engine"] not in best or rank(run) > rank(best[run["engine"]]):
            best[run["engine"]] = run
    return list(best.values())


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "-"


def cpu_pair(cpu: dict | None) -> str:
    return f"{cpu['tagging']}, {cpu['other']}" if cpu else "-"


def markdown(results: dict) -> str:
    rows = results["engines"]
    local = next(row for row in rows if row["engine"] == "local")
    lines = [
        f"{results['images']} JPEGs (320 x 240), {results['model']}, batch size {results['batch_size']}, "
        f"{results['cpus']} CPUs, best of {results['rounds']} rounds; ratios to the one-process engine.",
        "",
        "| engine | images/s | ratio | steady images/s | ratio | steady images/s of each round | first row (s) "
        "| peak RSS of a tagger (MiB) | CPU ms/image: taggers, other | steady: taggers, other |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        rounds = ", ".join(str(run["steady_images_per_s"]) for run in results["runs"] if run["engine"] == row["engine"])
        lines.append(
            f"| {row['engine']} | {row['images_per_s']} | {ratio(row['images_per_s'], local['images_per_s'])} | "
            f"{row['steady_images_per_s']} | {ratio(row['steady_images_per_s'], local['steady_images_per_s'])} | "
            f"{rounds} | {row['first_row_s']} | {row['rss_mib_per_tagger']} | {cpu_pair(row['cpu_ms_per_image'])} | "
            f"{cpu_pair(row['steady_cpu_ms_per_image'])} |"
        )
    return "\n".join(lines) + "\n"


def described_model(model: str) -> str:
    """`SRN BACKBONE at SIZE px, N labels`, from the model folder's config (no path of this machine in the table)."""
    config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    return f"SRN {config['backbone']} at {config['image_size']} px, {len(config['id2label'])} labels"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an SRN model folder (default: an untrained tf_efficientnet_lite0 SRN)")
    parser.add_argument("--image-size", type=int, default=192, help="the untrained model's input side (default 192)")
    parser.add_argument("--num-labels", type=int, default=20, help="the untrained model's labels (default 20)")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to tag (default 2000)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"a comma list of {', '.join(ENGINES)}")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each engine, in turn (default 2)")
    parser.add_argument("--output-dir", default="benchmarks/results/bulk_ray", help="where the tables are written")
    args = parser.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown or min(args.images, args.batch_size, args.rounds) < 1:
        parser.error(f"--engines are {', '.join(ENGINES)}; --images, --batch-size and --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bulk-ray-"))
    try:
        photos = work / "photos"
        write_photos(photos, args.images)
        model = args.model or os.fspath(untrained_model(work / "model", args.image_size, args.num_labels))
        described = f"trained {described_model(model)}" if args.model else f"untrained {described_model(model)}"
        results = {"images": args.images, "batch_size": args.batch_size, "model": described, "cpus": os.cpu_count()}
        results["rounds"], results["runs"] = args.rounds, []
        for round_index in range(args.rounds):
            for engine in args.engines.split(","):
                run = run_engine(engine, model, photos, work, args.images, args.batch_size)
                results["runs"].append({"round": round_index + 1, **run})
                print(json.dumps(results["runs"][-1]), flush=True)
        results["engines"] = best_runs(results["runs"])
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
