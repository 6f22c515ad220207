"""Deployment benchmarks of SRN, in one process: runtimes, label-set scaling, bulk tagging.

    python benchmarks/benchmark_deploy.py                     # the full run, SRN-ResNet-101 (about 30 minutes, 2 cores)
    python benchmarks/benchmark_deploy.py --quick             # every section, fewer repeats and images
    python benchmarks/benchmark_deploy.py --device cuda --quick            # on a GPU: 224 and 448, a few minutes
    python benchmarks/benchmark_deploy.py --device cuda --compile --autocast-bf16 --channels-last

Sections (each figure the median of `--repeats` runs after warm-up, the compared runs interleaved round by round,
so that a machine busy with other work slows them alike and the ratios stay fair):

1. runtimes: SRN at each `--runtime-sizes` (224; 224 and 448 on CUDA), latency at batch 1 and throughput at
   batch 16, of ONNX Runtime (the graph of `srn_hf.export`, float32), PyTorch eager float32, the fast path
   (`srn_hf.fast`: bf16 autocast, channels-last) and the `torch.export` program (float32); the ONNX logits' largest
   difference from PyTorch's.
2. label-set scaling: SRN against the plain timm classifier at C = 80, 1,000 and 10,000 labels and each `--sizes`
   (224 448), batch `--scaling-batch-size`: time, peak tensor memory, and the time of the three layers that grow
   linearly in C (f_att's last convolution, the confidence maps S, f_sr's first convolution) on their own inputs.
3. bulk tagging: `srn_hf.bulk.tag_images` over COCO-sized JPEG photos (decoded in `--num-workers` DataLoader
   workers, records written to JSONL) against the model alone on ready tensors, same batch size and precision, in
   float32 and on the fast path; target >= 0.9.
4. flat memory: the resident memory of a bulk run (main process and its workers) as it writes `--memory-images`
   records (10,000; SRN on `--memory-backbone`, since it is the run's memory, not the model's, that is measured).

Writes `deploy_results.json` and `deploy_results.md` to `--output-dir`; speed is never asserted in the tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmark_srn.py: fair timings on a shared machine

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchmark_srn import write_photos  # noqa: E402
from benchmark_utils import build_model, logits_of, machine_description  # noqa: E402
from probes import MIB, check_threads, interleaved_times, peak_memory, synchronize, timed_run  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from srn_hf.fast import autocast_context, fast_inference, use_channels_last  # noqa: E402

LABEL_COUNTS = (80, 1000, 10000)


def torch_forward(model, pixel_values: torch.Tensor, bf16: bool):
    """`model(pixel_values)` under inference mode, with bf16 autocast when `bf16`."""

    def call():
        with torch.inference_mode(), autocast_context(enabled=bf16, device_type=pixel_values.device.type):
            return logits_of(model(pixel_values))

    return call


def options_model(model: torch.nn.Module, args) -> torch.nn.Module:
    """The model with the `--channels-last` and `--compile` options applied."""
    if args.channels_last:
        use_channels_last(model)
    return torch.compile(model) if args.compile else model


# ---------------------------------------------------------------------------------------------------------------
# 1. Runtimes


def onnx_session(model, image_size: int, folder: str, device: torch.device):
    """An ONNX Runtime session on the ONNX export of `model` (CUDA provider on a GPU where onnxruntime has it)."""
    import onnxruntime

    from srn_hf.export import export_onnx

    path = export_onnx(copy.deepcopy(model).cpu(), Path(folder) / f"srn_{image_size}.onnx", image_size)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=providers)


def runtimes(args, image_size: int, folder: str) -> dict:
    """The four runtimes of one random-init SRN at `image_size`: callables of a batch of pixel values."""
    from srn_hf.export import export_program

    device = torch.device(args.device)
    model = build_model("srn", args.backbone, args.num_labels, image_size).to(device)
    session = onnx_session(model, image_size, folder, device)
    program = export_program(copy.deepcopy(model).cpu(), image_size).module().to(device)
    fast = fast_inference(copy.deepcopy(model), compile=args.compile)
    eager = options_model(model, args)
    return {
        "onnxruntime": lambda pixels: session.run(None, {"pixel_values": pixels.cpu().numpy()})[0],
        "pytorch_fp32": lambda pixels: torch_forward(eager, pixels, bf16=False)(),
        "fast_path": lambda pixels: torch_forward(fast, pixels, bf16=True)(),
        "torch_export": lambda pixels: torch_forward(lambda values: program(values)[0], pixels, bf16=False)(),
        "onnx_providers": session.get_providers(),
    }


def benchmark_runtimes(args) -> list[dict]:
    """Rows (runtime, size, batch): seconds per batch and images/s, and the ratio to PyTorch eager float32."""
    rows, device = [], torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="srn-deploy-") as folder:
        for image_size in args.runtime_sizes:
            calls = runtimes(args, image_size, folder)
            providers = calls.pop("onnx_providers")
            for batch in (1, 16):
                pixels = torch.randn(batch, 3, image_size, image_size, device=device)
                # Pixel values are on the device for PyTorch; ONNX Runtime's copy to numpy is part of its call.
                reference = calls["pytorch_fp32"](pixels).float().cpu().numpy()
                parity = {
                    "onnx_max_abs_diff": float(np.abs(calls["onnxruntime"](pixels) - reference).max()),
                    "largest_abs_logit": float(np.abs(reference).max()),  # random-init ResNet-101: about 1e4
                    "torch_export_max_abs_diff": float(
                        np.abs(calls["torch_export"](pixels).float().cpu().numpy() - reference).max()
                    ),
                    "onnx_providers": providers,
                }
                runs = {
                    name: timed_run(lambda call=call, pixels=pixels: call(pixels), device)
                    for name, call in calls.items()
                }
                times = interleaved_times(runs, args.warmup, args.repeats, desc=f"runtimes {image_size} batch {batch}")
                baseline = statistics.median(times["pytorch_fp32"])
                for name, values in times.items():
                    seconds = statistics.median(values)
                    rows.append(
                        {
                            "runtime": name,
                            "image_size": image_size,
                            "batch_size": batch,
                            "seconds": seconds,
                            "images_per_second": batch / seconds,
                            "speedup_over_fp32": baseline / seconds,
                            "times": values,
                            **parity,
                        }
                    )
                tqdm.write(format_runtime_rows(rows[-len(times) :]))
            del calls
    return rows


def format_runtime_rows(rows: list[dict]) -> str:
    return "\n".join(
        f"{row['runtime']:>13} {row['image_size']} batch {row['batch_size']:>2}: {row['seconds'] * 1000:8.1f} ms "
        f"{row['images_per_second']:6.1f} images/s  x{row['speedup_over_fp32']:.2f} vs fp32"
        for row in rows
    )


# ---------------------------------------------------------------------------------------------------------------
# 2. Label-set scaling


def linear_in_c_layers(srn) -> dict[str, torch.nn.Module]:
    """The three SRN layers whose cost grows linearly in the number of labels C."""
    base = srn.srn
    return {
        "f_att_last_conv": base.attention.conv3,
        "confidence_S": base.confidence,
        "f_sr_first_conv": base.spatial_regularization.conv1,
    }


def captured_inputs(model, layers: dict, pixel_values: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    """Each layer's input during one forward pass (forward pre-hooks)."""
    inputs, handles = {}, []
    for name, layer in layers.items():
        handles.append(
            layer.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0]))
        )
    torch_forward(model, pixel_values, bf16)()
    for handle in handles:
        handle.remove()
    return inputs


def scaling_point(args, image_size: int, num_labels: int) -> list[dict]:
    """SRN and timm at one (size, C): time, peak memory, and SRN's linear-in-C layers timed on their inputs."""
    device, bf16 = torch.device(args.device), args.autocast_bf16
    srn = build_model("srn", args.backbone, num_labels, image_size).to(device)
    timm_model = build_model("timm", args.backbone, num_labels, image_size).to(device)
    pixel_values = torch.randn(args.scaling_batch_size, 3, image_size, image_size, device=device)
    layers = linear_in_c_layers(srn)
    inputs = captured_inputs(srn, layers, pixel_values, bf16)
    srn, timm_model = options_model(srn, args), options_model(timm_model, args)
    runs = {"srn": torch_forward(srn, pixel_values, bf16), "timm": torch_forward(timm_model, pixel_values, bf16)}
    runs.update({name: torch_forward(layers[name], inputs[name], bf16) for name in layers})
    times = interleaved_times(
        {name: timed_run(call, device) for name, call in runs.items()},
        args.warmup,
        args.repeats,
        desc=f"scaling {image_size} C={num_labels}",
    )
    seconds = {name: statistics.median(values) for name, values in times.items()}
    extra = seconds["srn"] - seconds["timm"]
    rows = []
    for name, model in (("srn", srn), ("timm", timm_model)):
        memory = model_peak_memory(runs[name], model, device)
        row = {
            "model": name,
            "image_size": image_size,
            "num_labels": num_labels,
            "seconds": seconds[name],
            "ratio_to_timm": seconds[name] / seconds["timm"],
            **memory,
            "times": times[name],
        }
        if name == "srn":
            row["linear_in_c_seconds"] = {layer: seconds[layer] for layer in layers}
            row["linear_in_c_share_of_extra"] = {
                layer: seconds[layer] / extra if extra > 0 else None for layer in layers
            }
        rows.append(row)
    return rows


def model_peak_memory(call, model, device: torch.device) -> dict[str, float]:
    """Peak memory of one forward pass: live tensors on CPU (probes.peak_memory), the allocator's on CUDA."""
    if device.type != "cuda":
        return peak_memory(call, model)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_memory_mib": peak / MIB, "peak_allocated_mib": (peak - base) / MIB}


def benchmark_scaling(args) -> list[dict]:
    rows = []
    for image_size in args.sizes:
        for num_labels in LABEL_COUNTS:
            rows += scaling_point(args, image_size, num_labels)
            srn, timm_row = rows[-2], rows[-1]
            tqdm.write(
                f"scaling {image_size} C={num_labels}: SRN {srn['seconds'] * 1000:.0f} ms "
                f"{srn['peak_memory_mib']:.0f} MiB, timm {timm_row['seconds'] * 1000:.0f} ms "
                f"{timm_row['peak_memory_mib']:.0f} MiB"
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 3. Bulk tagging against the model alone; 4. memory over many images


def saved_tagger(args, folder: Path, backbone: str, image_size: int):
    """A random-init SRN saved with its image processor, loaded as the multi-label pipeline (as `srn-hf predict`
    does)."""
    from transformers import pipeline

    from srn_hf.pipeline_srn import TASK
    from srn_hf.processing import create_image_processor

    model = build_model("srn", backbone, args.num_labels, image_size)
    model.save_pretrained(folder)
    create_image_processor(model.config).save_pretrained(folder)
    return pipeline(TASK, model=os.fspath(folder), device=args.device)


def model_only_run(tagger, photos: list[str], batch_size: int, fast: bool, device: torch.device):
    """The model alone over len(photos) images, as ready batches of preprocessed photos; returns its images/s."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in photos[:batch_size]]
    pixel_values = tagger.image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
    forward = torch_forward(tagger.model, pixel_values, bf16=fast)
    batches = len(photos) // batch_size

    def run() -> float:
        return batches * batch_size / sum(timed_run(forward, device)() for _ in range(batches))

    return run


def bulk_run(tagger, photos: list[str], folder: Path, batch_size: int, fast: bool, args):
    """`srn_hf.bulk.tag_images` over the photos into a fresh JSONL file, end to end; returns its images/s."""
    from srn_hf.bulk import file_sources, tag_images

    def run() -> float:
        output = folder / f"bulk_{time.time_ns()}.jsonl"
        start = time.perf_counter()
        summary = tag_images(
            tagger,
            file_sources(photos),
            "benchmark",
            output=output,
            batch_size=batch_size,
            num_workers=args.num_workers,
            fast=fast,
        )
        seconds = time.perf_counter() - start
        assert summary.predicted == len(photos) and summary.failed == 0
        return len(photos) / seconds

    return run


def benchmark_bulk(args, folder: Path) -> list[dict]:
    """Bulk tagging's images/s against the model alone's, float32 then the fast path, rounds interleaved."""
    device = torch.device(args.device)
    photos = write_photos(folder, args.bulk_images)
    tagger = saved_tagger(args, folder / "model", args.backbone, args.bulk_image_size)
    rows = []
    for precision, fast in (("float32", False), ("fast_path", True)):
        if precision not in args.bulk_precisions:
            continue
        if fast:
            use_channels_last(tagger.model)
        runs = {
            "model_only": model_only_run(tagger, photos, args.bulk_batch_size, fast, device),
            "bulk": bulk_run(tagger, photos, folder, args.bulk_batch_size, fast, args),
        }
        rates = {name: [] for name in runs}
        for _ in tqdm(range(args.bulk_rounds), desc=f"bulk {precision}", leave=False):
            for name, run in runs.items():
                rates[name].append(run())
        model_only, bulk = (statistics.median(rates[name]) for name in ("model_only", "bulk"))
        rows.append(
            {
                "precision": precision,
                "batch_size": args.bulk_batch_size,
                "images": len(photos),
                "image_size": args.bulk_image_size,
                "num_workers": args.num_workers,
                "model_only_images_per_second": model_only,
                "bulk_images_per_second": bulk,
                "ratio": bulk / model_only,
                "rates": rates,
            }
        )
        tqdm.write(
            f"bulk {precision}: {bulk:.1f} images/s against {model_only:.1f} model alone (x{bulk / model_only:.2f})"
        )
    return rows


def resident_mib() -> tuple[float, float]:
    """Resident memory (MiB) of this process, and with its children's own memory (USS: the DataLoader workers are
    forked, and their RSS would count the pages they share with this process again)."""
    import psutil

    process = psutil.Process()
    own = process.memory_info().rss
    children = sum(child.memory_full_info().uss for child in process.children(recursive=True))
    return own / MIB, (own + children) / MIB


def sample_memory(output: Path, samples: list, stop: threading.Event) -> None:
    """Every 0.25 s: (records written so far, resident MiB, with workers), until `stop` is set."""
    while not stop.wait(0.25):
        try:
            written = output.read_bytes().count(b"\n") if output.exists() else 0
            samples.append((written, *resident_mib()))
        except (OSError, ImportError, ProcessLookupError):
            continue
        except Exception as error:  # psutil.NoSuchProcess: a worker ended between listing and reading
            if type(error).__name__ != "NoSuchProcess":
                raise


def benchmark_memory(args, folder: Path) -> dict:
    """A bulk run over `--memory-images` paths (hard links to 20 photos) with its memory sampled as it writes."""
    from PIL import Image

    from srn_hf.bulk import file_sources, tag_images

    originals = write_photos(folder, 20, seed=1)
    for original in originals:  # 320 x 240: the run's memory is measured, not the decoder's speed
        Image.open(original).resize((320, 240)).save(original, quality=90)
    photos = []
    for index in range(args.memory_images):
        link = folder / f"link_{index:06d}.jpg"
        os.link(originals[index % len(originals)], link)
        photos.append(os.fspath(link))
    tagger = saved_tagger(args, folder / "memory_model", args.memory_backbone, 224)
    output, samples, stop = folder / "memory.jsonl", [], threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(output, samples, stop), daemon=True)
    sampler.start()
    start = time.perf_counter()
    summary = tag_images(
        tagger,
        file_sources(photos),
        "benchmark",
        output=output,
        batch_size=args.bulk_batch_size,
        num_workers=args.num_workers,
        fast=True,
        all_scores=True,
    )
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert summary.predicted == len(photos)
    after_first = [sample for sample in samples if sample[0] >= min(1000, len(photos) // 10)] or samples
    first, last = after_first[0], samples[-1]
    return {
        "backbone": args.memory_backbone,
        "images": len(photos),
        "seconds": seconds,
        "images_per_second": len(photos) / seconds,
        "batch_size": args.bulk_batch_size,
        "precision": "fast_path",
        "rss_mib_at_first_sample": {"records": first[0], "main": first[1], "with_workers": first[2]},
        "rss_mib_at_end": {"records": last[0], "main": last[1], "with_workers": last[2]},
        "growth_mib_main": last[1] - first[1],
        "growth_mib_with_workers": last[2] - first[2],
        "max_rss_mib_main": max(sample[1] for sample in after_first),
        "samples": samples[:: max(1, len(samples) // 200)],
    }


# ---------------------------------------------------------------------------------------------------------------
# Report


def markdown_tables(results: dict) -> str:
    """The tables of `deploy_results.md` (the figures docs/deploy.md quotes)."""
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['torch_threads']} threads, device "
        f"{results['settings']['device']}; load average {results['machine']['load_average']} at the start, "
        f"{results.get('load_average_end')} at the end.",
        "",
    ]
    if results.get("runtimes"):
        lines += ["| runtime | size | batch | ms per batch | images/s | x PyTorch fp32 |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {row['runtime']} | {row['image_size']} | {row['batch_size']} | {row['seconds'] * 1000:.1f} | "
            f"{row['images_per_second']:.2f} | {row['speedup_over_fp32']:.2f} |"
            for row in results["runtimes"]
        ]
        parity = max(results["runtimes"], key=lambda row: row["onnx_max_abs_diff"])
        relative = (
            parity["onnx_max_abs_diff"] / parity["largest_abs_logit"] if "largest_abs_logit" in parity else float("nan")
        )
        lines += [
            "",
            f"ONNX Runtime logits against PyTorch fp32: max abs difference {parity['onnx_max_abs_diff']:.2e}, "
            f"{relative:.1e} of the largest logit.",
            "",
        ]
    if results.get("scaling"):
        lines += [
            "| size | C | SRN ms | timm ms | SRN / timm | SRN peak MiB | timm peak MiB | f_att last conv ms | "
            "S ms | f_sr first conv ms | share of SRN's extra time |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = results["scaling"]
        for srn, timm_row in zip(rows[::2], rows[1::2]):
            layer_ms = [value * 1000 for value in srn["linear_in_c_seconds"].values()]
            shares = [value for value in srn["linear_in_c_share_of_extra"].values() if value is not None]
            lines.append(
                f"| {srn['image_size']} | {srn['num_labels']} | {srn['seconds'] * 1000:.0f} | "
                f"{timm_row['seconds'] * 1000:.0f} | {srn['ratio_to_timm']:.2f} | {srn['peak_memory_mib']:.0f} | "
                f"{timm_row['peak_memory_mib']:.0f} | "
                + " | ".join(f"{value:.1f}" for value in layer_ms)
                + f" | {sum(shares):.0%} |"
            )
        lines.append("")
    if results.get("bulk"):
        lines += [
            "| precision | batch | images | bulk images/s | model alone images/s | bulk / model |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['precision']} | {row['batch_size']} | {row['images']} | {row['bulk_images_per_second']:.2f} | "
            f"{row['model_only_images_per_second']:.2f} | {row['ratio']:.2f} |"
            for row in results["bulk"]
        ]
        lines.append("")
    if results.get("memory"):
        memory = results["memory"]
        lines += [
            f"Memory of a bulk run over {memory['images']} images (SRN on {memory['backbone']}, fast path, "
            f"--all-scores, JSONL): resident {memory['rss_mib_at_first_sample']['main']:.0f} MiB after "
            f"{memory['rss_mib_at_first_sample']['records']} records, {memory['rss_mib_at_end']['main']:.0f} MiB "
            f"after {memory['rss_mib_at_end']['records']} (growth {memory['growth_mib_main']:+.1f} MiB; with the "
            f"workers {memory['growth_mib_with_workers']:+.1f} MiB), {memory['images_per_second']:.1f} images/s.",
            "",
        ]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Two panels: SRN / timm time against C at each size; resident memory against records written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    scaling_axes, memory_axes = figure.subplots(1, 2)
    for image_size in sorted({row["image_size"] for row in results.get("scaling", [])}):
        rows = [row for row in results["scaling"] if row["model"] == "srn" and row["image_size"] == image_size]
        scaling_axes.plot(
            [row["num_labels"] for row in rows], [row["ratio_to_timm"] for row in rows], "o-", label=f"{image_size} px"
        )
    scaling_axes.set(
        xscale="log", xlabel="labels C", ylabel="SRN time / timm classifier time", title="label-set scaling"
    )
    scaling_axes.legend()
    samples = (results.get("memory") or {}).get("samples") or []
    if samples:
        records, main, with_workers = zip(*samples)
        memory_axes.plot(records, main, label="main process")
        memory_axes.plot(records, with_workers, label="with DataLoader workers")
        memory_axes.set_ylim(0, max(with_workers) * 1.1)
        memory_axes.legend()
    memory_axes.set(xlabel="records written", ylabel="resident memory (MiB)", title="bulk tagging memory")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, images and rounds (every section still runs)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--autocast-bf16", action="store_true", help="label-set scaling under bf16 autocast")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last weights for PyTorch fp32 and scaling"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the PyTorch models (eager, fast path, scaling)"
    )
    parser.add_argument("--backbone", default="resnet101", help="timm backbone of SRN (default resnet101)")
    parser.add_argument("--num-labels", type=int, default=80, help="labels C of the runtime and bulk sections (80)")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["runtimes", "scaling", "bulk", "memory"],
        choices=["runtimes", "scaling", "bulk", "memory"],
    )
    parser.add_argument("--runtime-sizes", type=int, nargs="+", help="runtime input sizes (224; 224 448 on cuda)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="label-set scaling input sizes")
    parser.add_argument("--scaling-batch-size", type=int, default=1, help="batch of the label-set scaling (1)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure, the median is reported (5; 2 quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bulk-images", type=int, help="photos of the bulk section (160; 48 quick)")
    parser.add_argument("--bulk-batch-size", type=int, default=16)
    parser.add_argument("--bulk-image-size", type=int, default=224)
    parser.add_argument("--bulk-rounds", type=int, help="rounds of bulk and model alone, interleaved (2; 1 quick)")
    parser.add_argument(
        "--bulk-precisions", nargs="+", default=["float32", "fast_path"], choices=["float32", "fast_path"]
    )
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the bulk runs (2)")
    parser.add_argument("--memory-images", type=int, help="images of the memory run (10000; 1000 quick)")
    parser.add_argument("--memory-backbone", default="resnet10t", help="SRN backbone of the memory run (resnet10t)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    check_threads(parser, args.threads)
    defaults = {"repeats": (5, 2), "bulk_images": (160, 48), "bulk_rounds": (2, 1), "memory_images": (10000, 1000)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.runtime_sizes is None:
        args.runtime_sizes = [224, 448] if args.device.startswith("cuda") else [224]
    return args


def check_device(device: str) -> str | None:
    """Why `device` cannot be used here, or None."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        return (
            f"--device {device}: no CUDA GPU is visible to torch {torch.__version__} (torch.cuda.is_available() "
            "is False); run it on a machine with a GPU, or with --device cpu"
        )
    if not device.startswith(("cpu", "cuda")):
        return f"--device {device}: expected cpu or cuda[:N]"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_device(args.device)
    if problem is not None:
        print(f"benchmark_deploy.py: error: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    settings = {key: value for key, value in vars(args).items() if key != "output_dir"}
    results = {"machine": machine_description(), "settings": settings}
    if args.device.startswith("cuda"):
        results["machine"]["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    if "runtimes" in args.sections:
        results["runtimes"] = benchmark_runtimes(args)
    if "scaling" in args.sections:
        results["scaling"] = benchmark_scaling(args)
    with tempfile.TemporaryDirectory(prefix="srn-deploy-") as folder:
        if "bulk" in args.sections:
            (Path(folder) / "bulk").mkdir()
            results["bulk"] = benchmark_bulk(args, Path(folder) / "bulk")
        if "memory" in args.sections:
            (Path(folder) / "memory").mkdir()
            results["memory"] = benchmark_memory(args, Path(folder) / "memory")
    results["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "deploy_results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = markdown_tables(results)
    (args.output_dir / "deploy_results.md").write_text(tables + "\n")
    plot(results, args.output_dir / "deploy_results.png")
    print(tables)
    print(f"{results['wall_seconds'] / 60:.1f} minutes; results in {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
