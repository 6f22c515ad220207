"""Speed and memory of SRN against the plain timm classifier and transformers' timm wrapper, in one process.

    python benchmarks/benchmark_srn.py          # the full run: SRN-ResNet-101, 80 labels (about 13 minutes on 2 cores)
    python benchmarks/benchmark_srn.py --quick  # a smoke run of every measurement (~2 minutes)
    python benchmarks/benchmark_srn.py --quick --backbone resnet10t --sizes 64 --batch-sizes 1 2 --train-batch-size 2

Measured, each after warm-up, as the median of `--repeats` runs, the models interleaved run by run (so that a
busy machine slows all of them alike and the ratios stay fair):

1. the machine's matrix-multiply peak (float32 and bfloat16), the yardstick for the achieved GFLOP/s;
2. inference of SRN, the plain timm classifier and `TimmWrapperForImageClassification` on the same backbone,
   at each input size and batch size, in float32 and on the fast path (bf16 autocast, channels-last weights,
   [`srn_hf.fast`]): seconds per batch, images/s, achieved GFLOP/s against the peak, peak tensor memory;
3. one training step (forward, loss, backward, SGD step) of each SRN stage ([`srn_hf.stages`]: in stages 2 and 3
   the backbone runs without autograd and only the branch is in the optimizer) against a plain fine-tuning step
   of the timm classifier, in both precisions, with peak memory;
4. the training data loader ([`srn_hf.data.transforms`], 2 worker processes, multi-scale crops of COCO-sized
   JPEG photos) in images/s against the training steps' images/s, and a stage step fed by it.

Writes `benchmark_results.json`, `benchmark_results.md` (the tables) and `benchmark_results.png` to
`--output-dir` and prints the tables and the targets (ratios) with whether each is met. Speed is never asserted
in the test suite: `tests/benchmarks/test_benchmarks.py` only runs `--quick` on a tiny backbone and checks the files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# OpenMP threads wait passively (sleep) instead of spinning between parallel regions: on a machine shared with
# other work, spinning threads of a descheduled team make small batches up to 10 times slower. Set before torch
# is imported; `OMP_WAIT_POLICY=ACTIVE python benchmarks/benchmark_srn.py` restores the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchmark_utils import MODEL_NAMES, build_model, count_flops, logits_of, machine_description  # noqa: E402
from probes import check_threads, interleaved_times, peak_memory, seconds_of, timed_run  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from srn_hf.fast import autocast_context, fast_inference, use_channels_last  # noqa: E402
from srn_hf.modeling_srn import sigmoid_cross_entropy  # noqa: E402
from srn_hf.stages import StageForward, apply_stage, stage_loss  # noqa: E402

PRECISIONS = ("float32", "bf16_channels_last")  # the second is the fast path of srn_hf.fast
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MATMUL_DTYPE_OF = {"float32": "float32", "bf16_channels_last": "bfloat16"}  # the peak each precision is held to


# ---------------------------------------------------------------------------------------------------------------
# The machine's matrix-multiply peak


def matmul_peak_gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """The machine's matrix-multiply peak in `dtype`: GFLOP/s of the best of `repeats` `size`^3 products.

    The product runs two ways and the faster counts: `torch.mm` (the BLAS library) and a 1x1 convolution in
    channels-last (oneDNN, the library of the models' convolutions; on AMD CPUs the BLAS path can be far slower).
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    pixels = a.view(1, size, size, 1).permute(0, 2, 1, 3).contiguous(memory_format=torch.channels_last)
    weight = b.t().reshape(size, size, 1, 1).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for product in (lambda: torch.mm(a, b), lambda: torch.nn.functional.conv2d(pixels, weight)):
        product()
        best = min(best, *(seconds_of(product) for _ in range(repeats)))
    return 2 * size**3 / best / 1e9


def prepare(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model's weights in the precision's memory layout: channels-last for the fast path, contiguous else."""
    if precision == "bf16_channels_last":
        return use_channels_last(model)
    return model.to(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------------------------
# Inference


def inference_run(model: torch.nn.Module, pixel_values: torch.Tensor, fast: bool) -> Callable[[], float]:
    """One timed forward pass under `torch.inference_mode()` (and bf16 autocast on the fast path)."""

    def forward() -> None:
        with torch.inference_mode(), autocast_context(enabled=fast):
            logits_of(model(pixel_values))

    return timed_run(forward)


def benchmark_inference(args, peaks: dict[str, float]) -> tuple[list[dict], dict]:
    """Rows (model, size, precision, batch) of inference time, throughput, GFLOP/s and memory; FLOPs per image."""
    rows, flops = [], {}
    for image_size in args.sizes:
        models = {name: build_model(name, args.backbone, args.num_labels, image_size) for name in MODEL_NAMES}
        probe = torch.randn(1, 3, image_size, image_size)
        flops[image_size] = {name: count_flops(model, probe) / 1e9 for name, model in models.items()}
        for precision in PRECISIONS:
            fast = precision != "float32"
            compiled = {
                name: fast_inference(model, compile=args.compile) if fast else prepare(model, precision)
                for name, model in models.items()
            }
            for batch_size in args.batch_sizes:
                pixel_values = torch.randn(batch_size, 3, image_size, image_size)
                runs = {name: inference_run(model, pixel_values, fast) for name, model in compiled.items()}
                desc = f"inference {image_size}px {precision} batch {batch_size}"
                times = interleaved_times(runs, args.warmup, args.repeats, desc)
                for name in compiled:
                    seconds = statistics.median(times[name])
                    gflops = flops[image_size][name] * batch_size / seconds
                    rows.append(
                        {
                            "model": name,
                            "image_size": image_size,
                            "precision": precision,
                            "batch_size": batch_size,
                            "seconds": seconds,
                            "times": times[name],
                            "images_per_second": batch_size / seconds,
                            "gflops_per_second": gflops,
                            "fraction_of_matmul_peak": gflops / peaks[MATMUL_DTYPE_OF[precision]],
                            **peak_memory(runs[name], models[name]),
                        }
                    )
                    tqdm.write(format_inference_row(rows[-1]))
        del models, compiled
    return rows, flops


# ---------------------------------------------------------------------------------------------------------------
# Training steps


def training_step(
    model, forward, loss_of, optimizer, pixel_values, labels, fast: bool, before=None
) -> Callable[[], float]:
    """One timed training step: forward and loss (under bf16 autocast on the fast path), backward, SGD step.

    `before()` (untimed) puts the model in the step's stage: the stages share one SRN, run interleaved.
    """

    def run() -> float:
        if before is not None:
            before()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(enabled=fast):
            loss = loss_of(forward(pixel_values), labels)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return run


def sgd(parameters) -> torch.optim.Optimizer:
    """The optimizer of every timed step (the authors' SGD with momentum; the lr does not change the speed)."""
    return torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, weight_decay=1e-4)


def training_runs(args, precision: str) -> tuple[dict[str, Callable[[], float]], dict[str, tuple]]:
    """The timed steps: the plain timm fine-tuning step and SRN stages 1 to 4; and what each one's memory tracks."""
    fast = precision != "float32"
    image_size, batch_size = args.sizes[0], args.train_batch_size
    pixel_values = torch.randn(batch_size, 3, image_size, image_size)
    labels = (torch.rand(batch_size, args.num_labels) < 0.1).float()
    plain = prepare(build_model("timm", args.backbone, args.num_labels, image_size), precision).train()
    srn = prepare(build_model("srn", args.backbone, args.num_labels, image_size), precision)

    plain_optimizer = sgd(plain.parameters())
    runs = {
        "timm fine-tune": training_step(
            plain, plain, sigmoid_cross_entropy, plain_optimizer, pixel_values, labels, fast
        )
    }
    tracked = {"timm fine-tune": (plain, plain_optimizer)}
    for stage in (1, 2, 3, 4):
        trainable = apply_stage(srn, stage)
        optimizer = sgd([parameter for parameters in trainable.values() for parameter in parameters])
        forward = StageForward(srn, stage)

        def loss_of(outputs, labels, stage=stage):
            return stage_loss(outputs, labels, stage)

        def before(stage=stage):
            apply_stage(srn, stage)

        name = f"SRN stage {stage}"
        runs[name] = training_step(srn, forward, loss_of, optimizer, pixel_values, labels, fast, before)
        tracked[name] = (srn, optimizer)
    return runs, tracked


def benchmark_training(args) -> list[dict]:
    """Rows (step, precision) of training step time, images/s, ratio to an SRN stage-1 step, peak memory."""
    rows = []
    for precision in PRECISIONS:
        runs, tracked = training_runs(args, precision)
        times = interleaved_times(runs, args.warmup, args.repeats, f"training {precision}")
        stage_1 = statistics.median(times["SRN stage 1"])
        for name, run in runs.items():
            seconds = statistics.median(times[name])
            rows.append(
                {
                    "step": name,
                    "precision": precision,
                    "image_size": args.sizes[0],
                    "batch_size": args.train_batch_size,
                    "seconds": seconds,
                    "times": times[name],
                    "images_per_second": args.train_batch_size / seconds,
                    "ratio_to_stage_1": seconds / stage_1,
                    **peak_memory(run, *tracked[name]),
                }
            )
            tqdm.write(format_training_row(rows[-1]))
        del runs, tracked
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Data loader


def write_photos(directory: Path, count: int, seed: int = 0) -> list[str]:
    """`count` COCO-sized (640 x 480) JPEG photos: random crops of scikit-image's bundled photographs."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.cat(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        photo = Image.fromarray(sources[index % len(sources)])
        width, height = photo.size
        scale = rng.uniform(0.6, 1.0)
        box_w, box_h = int(width * scale), int(height * scale)
        left, top = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        image = photo.crop((left, top, left + box_w, top + box_h)).resize((640, 480), Image.Resampling.BILINEAR)
        path = directory / f"photo_{index:05d}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def training_loader(args, directory: Path, image_processor) -> torch.utils.data.DataLoader:
    """The training `DataLoader` of srn_hf.data: multi-scale crops and flips, `--loader-workers` processes."""
    from datasets import Dataset, DatasetDict

    from srn_hf.data.common import multilabel_features
    from srn_hf.data.transforms import collate_multilabel, with_multilabel_transforms

    paths = write_photos(directory, args.loader_images)
    rng = np.random.default_rng(0)
    names = [f"label_{index}" for index in range(args.num_labels)]
    labels = [sorted(rng.choice(args.num_labels, size=3, replace=False).tolist()) for _ in paths]
    dataset = Dataset.from_dict(
        {"image": paths, "labels": labels, "image_id": [Path(path).stem for path in paths]},
        features=multilabel_features(names),
    )
    dataset = with_multilabel_transforms(DatasetDict({"train": dataset}), image_processor=image_processor)["train"]
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.loader_workers,
        collate_fn=collate_multilabel,
        drop_last=True,
    )


def loader_images_per_second(loader) -> float:
    """Images/s of one pass over the loader, counted from the second batch (the workers' start-up left out)."""
    batches = iter(loader)
    next(batches)
    start, images = time.perf_counter(), 0
    for batch in tqdm(batches, desc="data loader", total=len(loader) - 1, leave=False):
        images += batch["pixel_values"].shape[0]
    return images / (time.perf_counter() - start)


def benchmark_loader(args, training_rows: list[dict]) -> dict:
    """The loader's images/s against every training step's, and the fast-path stage 3 step fed by the loader."""
    from srn_hf.processing import create_image_processor

    srn = build_model("srn", args.backbone, args.num_labels, args.sizes[0])
    with tempfile.TemporaryDirectory() as directory:
        loader = training_loader(args, Path(directory), create_image_processor(srn.config))
        images_per_second = loader_images_per_second(loader)

        # The cheapest step (stage 3, fast path) fed by the loader, against the same step on one in-memory batch:
        # on a 2-core machine the workers and the model share the cores.
        use_channels_last(srn)
        trainable = apply_stage(srn, 3)
        optimizer = sgd([parameter for parameters in trainable.values() for parameter in parameters])
        forward = StageForward(srn, 3)

        def step(batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast_context():
                loss = stage_loss(forward(batch["pixel_values"]), batch["labels"], 3)
            loss.backward()
            optimizer.step()

        batches = iter(loader)
        first = next(batches)
        step(first)
        fed = []  # seconds per step: waiting for the loader's next batch included
        for _ in tqdm(range(len(loader) - 1), desc="stage 3 fed by the loader", leave=False):
            fed.append(seconds_of(lambda: step(next(batches))))
        in_memory = [seconds_of(step, first) for _ in fed]
        fed_seconds, in_memory_seconds = statistics.median(fed), statistics.median(in_memory)

    training = {f"{row['step']} ({row['precision']})": row["images_per_second"] for row in training_rows}
    fastest = max(training, key=training.get)
    return {
        "workers": args.loader_workers,
        "images": args.loader_images,
        "source_size": [640, 480],
        "images_per_second": images_per_second,
        "fastest_training_step": fastest,
        "fastest_training_images_per_second": training[fastest],
        "loader_over_fastest_training": images_per_second / training[fastest],
        "stage_3_fast_step_fed_by_loader_seconds": fed_seconds,
        "stage_3_fast_step_in_memory_seconds": in_memory_seconds,
        "fed_over_in_memory": fed_seconds / in_memory_seconds,
    }


# ---------------------------------------------------------------------------------------------------------------
# Targets, tables, chart


def find(rows: list[dict], **keys) -> dict:
    """The one row whose fields equal `keys`."""
    return next(row for row in rows if all(row[key] == value for key, value in keys.items()))


def paired_ratio(numerator: dict, denominator: dict) -> float:
    """Median over the rounds of the ratio of two interleaved measurements' times (each pair ran back to back).

    Pairing cancels slow changes of the machine's load, which the ratio of the two medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator["times"], denominator["times"]))


def evaluate_targets(inference: list[dict], training: list[dict], loader: dict, args) -> list[dict]:
    """The issue's targets as ratios from this run (paired medians), each with its limit and whether it is met."""
    targets = []

    def add(name: str, value: float, limit: float, at_most: bool) -> None:
        met = value <= limit if at_most else value >= limit
        targets.append({"target": name, "value": value, "limit": limit, "at_most": at_most, "met": bool(met)})

    size = args.sizes[0]
    for batch_size in args.batch_sizes:
        for precision in PRECISIONS:
            srn = find(inference, model="srn", image_size=size, precision=precision, batch_size=batch_size)
            plain = find(inference, model="timm", image_size=size, precision=precision, batch_size=batch_size)
            add(
                f"SRN / timm inference time, {size}px, {precision}, batch {batch_size}",
                paired_ratio(srn, plain),
                1.10,
                at_most=True,
            )
        fp32 = find(inference, model="srn", image_size=size, precision="float32", batch_size=batch_size)
        fast = find(inference, model="srn", image_size=size, precision="bf16_channels_last", batch_size=batch_size)
        add(
            f"SRN fast path speed-up over float32, {size}px, batch {batch_size}",
            fp32["seconds"] / fast["seconds"],
            2.0,
            at_most=False,
        )
    for precision in PRECISIONS:
        stage_1 = find(training, step="SRN stage 1", precision=precision)
        for stage in (2, 3):
            row = find(training, step=f"SRN stage {stage}", precision=precision)
            add(f"SRN stage {stage} / stage 1 step time, {precision}", paired_ratio(row, stage_1), 0.45, at_most=True)
    add(
        f"loader ({args.loader_workers} workers) / fastest training step, images/s",
        loader["loader_over_fastest_training"],
        1.0,
        at_most=False,
    )
    return targets


PRECISION_LABELS = {"float32": "float32", "bf16_channels_last": "bf16 + channels-last"}


def format_inference_row(row: dict) -> str:
    return (
        f"{row['model']:>12} {row['image_size']}px {PRECISION_LABELS[row['precision']]:>20} batch "
        f"{row['batch_size']:>2}: {row['seconds'] * 1000:8.1f} ms  {row['images_per_second']:6.1f} img/s  "
        f"{row['gflops_per_second']:6.0f} GFLOP/s ({100 * row['fraction_of_matmul_peak']:.0f} % of peak)  "
        f"{row['peak_memory_mib']:6.0f} MiB"
    )


def format_training_row(row: dict) -> str:
    return (
        f"{row['step']:>15} {PRECISION_LABELS[row['precision']]:>20}: {row['seconds']:7.2f} s/step  "
        f"{row['images_per_second']:6.1f} img/s  x{row['ratio_to_stage_1']:.2f} of stage 1  "
        f"{row['peak_memory_mib']:6.0f} MiB"
    )


def markdown_tables(results: dict) -> str:
    """The results as Markdown tables (machine, inference, training, loader, targets), for the README."""
    machine, peaks = results["machine"], results["matmul_peak_gflops"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['torch_threads']} torch threads), "
        f"{machine['memory_gib']} GiB, {machine['cpu_capability']}, AVX-512 bf16: {machine['avx512_bf16']}, "
        f"AMX: {machine['amx']}; torch {machine['torch']}, timm {machine['timm']}, transformers "
        f"{machine['transformers']}. Load average at start {machine['load_average'][0]:.2f}, at end "
        f"{results['load_average_end'][0]:.2f}. Matrix-multiply peak: {peaks['float32']:.0f} GFLOP/s float32, "
        f"{peaks['bfloat16']:.0f} GFLOP/s bfloat16.",
        "",
        f"Inference ({results['settings']['backbone']}, {results['settings']['num_labels']} labels; median of "
        f"{results['settings']['repeats']} runs after {results['settings']['warmup']} warm-up; peak = live tensors):",
        "",
        "| input | precision | batch | model | ms / batch | images/s | GFLOP/s (% of peak) | peak MiB | vs timm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["inference"]:
        plain = find(
            results["inference"],
            model="timm",
            image_size=row["image_size"],
            precision=row["precision"],
            batch_size=row["batch_size"],
        )
        lines.append(
            f"| {row['image_size']} | {PRECISION_LABELS[row['precision']]} | {row['batch_size']} | {row['model']} | "
            f"{row['seconds'] * 1000:.0f} | {row['images_per_second']:.1f} | {row['gflops_per_second']:.0f} "
            f"({100 * row['fraction_of_matmul_peak']:.0f} %) | {row['peak_memory_mib']:.0f} | "
            f"{row['seconds'] / plain['seconds']:.3f} |"
        )
    lines += [
        "",
        f"Training step (batch {results['settings']['train_batch_size']}, {results['settings']['sizes'][0]}px, "
        "SGD; stages 2 and 3 run the backbone without autograd):",
        "",
        "| step | precision | s / step | images/s | vs SRN stage 1 | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["training"]:
        lines.append(
            f"| {row['step']} | {PRECISION_LABELS[row['precision']]} | {row['seconds']:.2f} | "
            f"{row['images_per_second']:.1f} | {row['ratio_to_stage_1']:.2f} | {row['peak_memory_mib']:.0f} |"
        )
    loader = results["loader"]
    lines += [
        "",
        f"Data loader ({loader['workers']} workers, multi-scale crops of {loader['source_size'][0]}x"
        f"{loader['source_size'][1]} JPEGs): {loader['images_per_second']:.1f} images/s alone, "
        f"{loader['loader_over_fastest_training']:.2f} x the fastest training step ({loader['fastest_training_step']}, "
        f"{loader['fastest_training_images_per_second']:.1f} images/s). Stage 3 fast-path step fed by the loader: "
        f"{loader['stage_3_fast_step_fed_by_loader_seconds']:.2f} s, from memory "
        f"{loader['stage_3_fast_step_in_memory_seconds']:.2f} s (x{loader['fed_over_in_memory']:.2f}).",
        "",
        "| target | measured | limit | met |",
        "|---|---|---|---|",
    ]
    for target in results["targets"]:
        sign = "<=" if target["at_most"] else ">="
        lines.append(
            f"| {target['target']} | {target['value']:.3f} | {sign} {target['limit']} | "
            f"{'yes' if target['met'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Bar charts: inference images/s (largest batch), training step times, loader against training images/s."""
    import matplotlib
    import matplotlib.patches

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inference, training, settings = results["inference"], results["training"], results["settings"]
    batch_size = max(settings["batch_sizes"])
    figure, (ax_inference, ax_training, ax_loader) = plt.subplots(1, 3, figsize=(17, 5))
    groups = [(size, precision) for size in settings["sizes"] for precision in PRECISIONS]
    width = 0.8 / len(MODEL_NAMES)
    for index, name in enumerate(MODEL_NAMES):
        values = [
            find(inference, model=name, image_size=size, precision=precision, batch_size=batch_size)[
                "images_per_second"
            ]
            for size, precision in groups
        ]
        bars = ax_inference.bar(np.arange(len(groups)) + (index - 1) * width, values, width, label=name)
        ax_inference.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_inference.set_xticks(
        np.arange(len(groups)), [f"{size}px\n{PRECISION_LABELS[precision]}" for size, precision in groups], fontsize=8
    )
    ax_inference.set_ylabel("images / s")
    ax_inference.set_title(f"Inference, batch {batch_size} ({settings['backbone']})")
    ax_inference.legend()

    steps = list(dict.fromkeys(row["step"] for row in training))
    width = 0.8 / len(PRECISIONS)
    for index, precision in enumerate(PRECISIONS):
        values = [find(training, step=step, precision=precision)["seconds"] for step in steps]
        bars = ax_training.bar(
            np.arange(len(steps)) + (index - 0.5) * width, values, width, label=PRECISION_LABELS[precision]
        )
        ax_training.bar_label(bars, fmt="%.2f", fontsize=7)
    ax_training.set_xticks(np.arange(len(steps)), [step.replace("SRN ", "SRN\n") for step in steps], fontsize=8)
    ax_training.set_ylabel("seconds / step")
    ax_training.set_title(f"Training step, batch {settings['train_batch_size']}, {settings['sizes'][0]}px")
    ax_training.legend()

    names = [f"loader\n{results['loader']['workers']} workers"] + [
        f"{row['step'].replace('SRN ', '').replace(' fine-tune', '')}\n"
        f"{'fast' if row['precision'] != 'float32' else 'fp32'}"
        for row in training
    ]
    values = [results["loader"]["images_per_second"]] + [row["images_per_second"] for row in training]
    colors = ["tab:green"] + ["tab:orange" if row["precision"] != "float32" else "tab:blue" for row in training]
    bars = ax_loader.bar(np.arange(len(values)), values, color=colors)
    ax_loader.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_loader.set_xticks(np.arange(len(values)), names, fontsize=6.5)
    ax_loader.set_ylabel("images / s")
    ax_loader.set_title("Data loader against training steps")
    ax_loader.legend(
        handles=[
            matplotlib.patches.Patch(color=color, label=label)
            for color, label in (
                ("tab:green", "data loader"),
                ("tab:blue", "training, float32"),
                ("tab:orange", "training, bf16 + channels-last"),
            )
        ]
    )
    figure.suptitle(f"{results['machine']['cpu']}, {results['machine']['torch_threads']} threads", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 224 only, batches 1 and 4, 2 repeats, 48 loader images (unless given)",
    )
    parser.add_argument("--backbone", default="resnet101", help="timm model name (default resnet101)")
    parser.add_argument("--num-labels", type=int, default=80, help="number of labels C (default 80, MS-COCO)")
    parser.add_argument("--sizes", type=int, nargs="+", help="input sizes; the first is the training size (224 448)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="inference batch sizes (1 16)")
    parser.add_argument("--train-batch-size", type=int, help="training step batch size (16)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement, the median is reported (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (1)")
    parser.add_argument("--loader-images", type=int, help="images for the data loader measurement (320)")
    parser.add_argument("--loader-workers", type=int, default=2, help="data loader worker processes (2)")
    parser.add_argument("--matmul-size", type=int, default=4096, help="side of the matrix-multiply peak test")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models on the fast path")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the targets, tables and chart of an earlier results file",
    )
    args = parser.parse_args(argv)
    check_threads(parser, args.threads)
    quick = {"sizes": [224], "batch_sizes": [1, 4], "train_batch_size": 4, "repeats": 2, "loader_images": 48}
    full = {"sizes": [224, 448], "batch_sizes": [1, 16], "train_batch_size": 16, "repeats": 5, "loader_images": 320}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.matmul_size = min(args.matmul_size, 2048)
    if args.loader_images < 2 * args.train_batch_size:
        raise SystemExit(
            f"--loader-images={args.loader_images} must be at least 2 batches "
            f"(--train-batch-size={args.train_batch_size})"
        )
    return args


def write_report(results: dict, output_dir: Path) -> None:
    """Writes the results JSON, the Markdown tables and the chart to `output_dir`; prints the tables."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "benchmark_results.json").write_text(json.dumps(results, indent=2) + "\n")
    tables = markdown_tables(results)
    (output_dir / "benchmark_results.md").write_text(tables)
    plot(results, output_dir / "benchmark_results.png")
    print(tables)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        results = json.loads(args.report_from.read_text())
        settings = argparse.Namespace(**results["settings"])
        results["targets"] = evaluate_targets(results["inference"], results["training"], results["loader"], settings)
        write_report(results, args.output_dir)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    results = {
        "machine": {**machine_description(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]},
        "settings": {key: value for key, value in vars(args).items() if key not in ("output_dir", "report_from")},
    }
    results["matmul_peak_gflops"] = {
        name: matmul_peak_gflops(dtype, args.matmul_size, args.repeats + 2) for name, dtype in MATMUL_DTYPES.items()
    }
    tqdm.write(f"matrix-multiply peak: {results['matmul_peak_gflops']}")
    results["inference"], results["gflops_per_image"] = benchmark_inference(args, results["matmul_peak_gflops"])
    results["training"] = benchmark_training(args)
    results["loader"] = benchmark_loader(args, results["training"])
    results["targets"] = evaluate_targets(results["inference"], results["training"], results["loader"], args)
    for name, dtype in MATMUL_DTYPES.items():  # measured again at the end: the better one is the peak
        end = matmul_peak_gflops(dtype, args.matmul_size, args.repeats + 2)
        results["matmul_peak_gflops"][name] = max(results["matmul_peak_gflops"][name], end)
    for row in results["inference"]:
        row["fraction_of_matmul_peak"] = (
            row["gflops_per_second"] / results["matmul_peak_gflops"][MATMUL_DTYPE_OF[row["precision"]]]
        )
    results["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started

    write_report(results, args.output_dir)
    print(f"{results['wall_seconds'] / 60:.1f} minutes; results in {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
