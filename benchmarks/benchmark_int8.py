"""INT8 against float32 for CPU serving: which operators stay float32, and what the INT8 model costs and gains.

    python benchmarks/benchmark_int8.py --model outputs/demo/final --data stamp_scenes \\
        --data-option path=data/stamp_scenes   # study, correction, frontier and measure (about an hour, 2 cores)
    python benchmarks/benchmark_int8.py ... --sections study --name int8_study  # the choice of float32 parts only

Sections (results: `--output-dir`/`--name`.{json,md}, int8.{json,md} by default):

- **study** (on the validation split, never the test split): the float32 ONNX graph quantized with every operator
  quantized, then with one candidate at a time left float32 (an operator type, one of SRN's branches by the prefix
  of its weights: f_att, the confidence maps S, f_sr, f_cls, or one of the backbone's feature stages), then with the
  library's choice (`srn_hf.quantize.FLOAT_OPERATORS` and the backbone's first stage); the other calibration
  methods with nothing and with the library's choice float32. Each: the largest and the mean absolute sigmoid-score
  difference from the float32 graph over the validation images, and the mAP change with its paired bootstrap
  interval. Each method calibrates once (ONNX Runtime's calibration cache).
- **correction** (calibrated on the validation split; scored on `--correction-splits`, validation and train by
  default, never test): each calibration method with bias correction (`srn_hf.quantize.correct_biases`) off and on,
  the backbone fully quantized (Softmax float32); each setting's largest and mean score error and mAP change with its
  paired bootstrap interval on each split. The training split's 1,600 images are neither calibration nor correction
  images, and four times the validation split: what the default was chosen on.
- **frontier** (validation split, no bias correction): error against speed, keeping ever more of the backbone's
  first layers float32 (with Softmax): nothing, stage 0, stage 0 and the first block of stage 1, and so on; each
  setting's largest and mean score error and mAP change, and its images per second at the largest batch size
  against ONNX Runtime float32, every graph timed round by round in the same run.
- **measure** (calibrated and thresholds tuned on the validation split, figures on the test split): the folder that
  `srn-hf export --quantize int8 --data ...` writes, against the float32 export. mAP, CF1 and OF1 at the thresholds
  each folder carries (and INT8 at the float model's thresholds), the mAP difference with a paired bootstrap
  interval, per-image label-set agreement, the five labels whose AP changes most, the model files' sizes; images
  per second at batch 1 and 16 of eager PyTorch float32, ONNX Runtime float32 and ONNX Runtime INT8, interleaved
  round by round (ratios from one run).
- **speed**: only the images per second of **measure** (its INT8 folder calibrated, thresholds not tuned), for a
  run of its own on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_utils import machine_description  # noqa: E402
from probes import interleaved_times, timed_run  # noqa: E402

import srn_hf  # noqa: E402
from srn_hf.bulk import dataset_sources, parse_data_options  # noqa: E402
from srn_hf.data import label_names, load_multilabel_dataset  # noqa: E402
from srn_hf.export import ExportedTagger, export_image_processor, export_model  # noqa: E402
from srn_hf.metrics import map_difference, multilabel_metrics  # noqa: E402
from srn_hf.model_folder import check_model_folder, load_model  # noqa: E402
from srn_hf.quantize import (  # noqa: E402
    BACKBONE_WEIGHTS,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    FLOAT_FIRST_STAGE,
    FLOAT_OPERATORS,
    calibration_images,
    export_quantized,
    feature_stage_weights,
    first_block,
    first_stage_weights,
    float_layer_weights,
    quantize_graph,
)
from srn_hf.scoring import evaluation_loader, score_split_exported  # noqa: E402

CANDIDATE_OPERATORS = ("Softmax", "Sigmoid", "Mul", "MatMul", "BatchNormalization", "Gemm", "Add")
# The attention maps A (Softmax) reach f_sr through U = A x sigmoid(S) (Mul): A stays float only with both.
CANDIDATE_COMBINATIONS = (("Softmax", "Mul"), ("Softmax", "Sigmoid", "Mul"))
# SRN's branches, by the prefix of their weights' names in the exported graph.
BRANCHES = {
    "f_att (attention convolutions)": ("model.srn.attention.",),
    "confidence maps S": ("model.srn.confidence.",),
    "f_sr (spatial regularization)": ("model.srn.spatial_regularization.",),
    "f_cls (classifier)": ("model.srn.classifier.",),
}


def study_settings(args) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Each setting of the study: its calibration method, the operator types and the weights' prefixes kept float32."""
    method = args.calibration_method
    config = check_model_folder(args.model)
    stages = feature_stage_weights(config)
    library = (FLOAT_OPERATORS, float_layer_weights(config) if FLOAT_FIRST_STAGE else ())
    settings = {"every operator quantized": (method, (), ())}
    settings |= {f"{name} float32": (method, (name,), ()) for name in CANDIDATE_OPERATORS}
    settings |= {f"{' + '.join(names)} float32": (method, names, ()) for names in CANDIDATE_COMBINATIONS}
    settings |= {f"{branch} float32": (method, (), prefixes) for branch, prefixes in BRANCHES.items()}
    for index, prefixes in enumerate(stages):
        first, last = (prefix.removeprefix("model.srn.backbone.").rstrip(".") for prefix in (prefixes[0], prefixes[-1]))
        settings[f"backbone stage {index} ({first} to {last}) float32"] = (method, (), prefixes)
    for prefixes in stages[1:]:  # each stage's first block, with Softmax and stage 0 float32
        block = first_block(prefixes)
        weights = stages[0] + tuple(prefix for prefix in prefixes if prefix.startswith(block))
        settings[f"Softmax, stage 0 and {block.removeprefix(BACKBONE_WEIGHTS).rstrip('.')} float32"] = (
            method,
            FLOAT_OPERATORS,
            weights,
        )
    settings[
        f"library choice: {', '.join(FLOAT_OPERATORS)}{' and backbone stage 0' if FLOAT_FIRST_STAGE else ''} float32"
    ] = (
        method,
        *library,
    )
    for other in (name for name in CALIBRATION_METHODS if name != method):
        settings[f"{other} calibration, every operator quantized"] = (other, (), ())
        settings[f"{other} calibration, library choice"] = (other, *library)
    return settings


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def batched_scores(tagger: ExportedTagger, pixel_values: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate(
        [
            sigmoid(tagger.logits(pixel_values[start : start + batch_size]))
            for start in range(0, len(pixel_values), batch_size)
        ]
    )


def score_errors(scores: np.ndarray, reference: np.ndarray, labels: np.ndarray, reference_map: float) -> dict:
    figures = multilabel_metrics(scores, labels)
    return {
        "max_score_error": float(np.abs(scores - reference).max()),
        "mean_score_error": float(np.abs(scores - reference).mean()),
        "mAP": figures["mAP"],
        "mAP_change": figures["mAP"] - reference_map,
    }


def split_inputs(args, split: str, processor, model_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All of one split's `pixel_values` (evaluation transform) and its labels in the model's label order."""
    splits = load_multilabel_dataset(args.data, **args.options)
    pixels, labels = [], []
    for batch in evaluation_loader(processor, splits[split], 32):
        pixels.append(batch["pixel_values"].numpy())
        labels.append(batch["labels"].numpy())
    names = label_names(splits)
    return np.concatenate(pixels), np.concatenate(labels)[:, [names.index(name) for name in model_names]]


def quantized_folder(
    float_folder: Path, folder: Path, calibration, method: str, operators, weights, work: Path, corrected: bool = False
):
    """An export folder whose graph is the float32 one quantized with `operators` and the layers of `weights` float32,
    its biases corrected if `corrected`; each method calibrates once (ONNX Runtime's calibration cache in `work`).
    Returns the quantization record. (Without bias correction unless asked, as the study and frontier measured.)"""
    folder.mkdir()
    for path in float_folder.iterdir():
        if path.name != "model.onnx":
            (folder / path.name).write_bytes(path.read_bytes())
    cache = work / f"calibration_cache_{method}.json"
    if not cache.exists():  # the first call of each method quantizes every operator, so every range is cached
        quantize_graph(
            float_folder / "model.onnx", work / "all.onnx", calibration.pixel_values, method, (), (), cache, False
        )
    return quantize_graph(
        float_folder / "model.onnx",
        folder / "model.onnx",
        calibration.pixel_values,
        method,
        operators,
        weights,
        cache,
        bias_correction=corrected,
    )


def validation_reference(args, float_folder: Path) -> tuple:
    """The calibration images, the validation images and labels, the float32 graph's scores and mAP on them."""
    processor = export_image_processor(args.model, None)
    calibration = calibration_images(
        dataset_sources(args.data, args.options, "validation"), processor, args.calibration_count
    )
    pixels, labels = split_inputs(args, "validation", processor, ExportedTagger(float_folder).labels)
    if args.study_images:  # evenly spaced over the split
        kept = np.unique(np.linspace(0, len(pixels) - 1, min(args.study_images, len(pixels))).round().astype(int))
        pixels, labels = pixels[kept], labels[kept]
    reference = batched_scores(ExportedTagger(float_folder), pixels)
    return calibration, pixels, labels, reference, multilabel_metrics(reference, labels)["mAP"]


def frontier_settings(args) -> dict[str, tuple[str, ...]]:
    """The layers kept float32 (with Softmax) at each point of the error-speed frontier: ever more of the backbone's
    first layers, from none to the first blocks of three stages after the first."""
    config = check_model_folder(args.model)
    stages = feature_stage_weights(config)
    blocks = [tuple(p for p in stage if p.startswith(first_block(stage))) for stage in stages[1:4]]
    names = [first_block(stage).removeprefix(BACKBONE_WEIGHTS).rstrip(".") for stage in stages[1:4]]
    return {
        "Softmax only": (),
        "+ stage 0": stages[0],
        f"+ stage 0, {names[0]}": stages[0] + blocks[0],
        f"+ stage 0, {names[0]}, {names[1]}": stages[0] + blocks[0] + blocks[1],
        "+ stages 0 and 1": stages[0] + stages[1],
        f"+ stage 0, {', '.join(names)}": stages[0] + sum(blocks, ()),
    }


def run_frontier(args, float_folder: Path, work: Path) -> dict:
    """Each setting of [`frontier_settings`]: its validation score error, and its images per second at the largest
    batch size against ONNX Runtime float32, all graphs timed round by round in one run."""
    calibration, pixels, labels, reference, reference_map = validation_reference(args, float_folder)
    method, rows, runs = args.calibration_method, [], {}
    batch = max(args.batch_sizes)
    inputs = np.random.default_rng(0).standard_normal((batch, 3, *pixels.shape[2:])).astype(np.float32)
    float_tagger = ExportedTagger(float_folder)
    runs["onnxruntime float32"] = timed_run(lambda: float_tagger.logits(inputs))
    for name, weights in frontier_settings(args).items():
        folder = work / f"frontier-{len(rows)}"
        record = quantized_folder(float_folder, folder, calibration, method, FLOAT_OPERATORS, weights, work)
        tagger = ExportedTagger(folder)
        errors = score_errors(batched_scores(tagger, pixels), reference, labels, reference_map)
        rows.append({"setting": name, "float_nodes": len(record["float_nodes"]), **errors})
        runs[name] = timed_run(lambda tagger=tagger: tagger.logits(inputs))
        print(f"{name}: {errors}", flush=True)
    times = interleaved_times(runs, args.warmup, args.repeats, f"frontier, batch {batch}")
    base = batch / statistics.median(times["onnxruntime float32"])
    for row in rows:
        row["images_per_second"] = batch / statistics.median(times[row["setting"]])
        row["vs_onnxruntime_float32"] = row["images_per_second"] / base
    return {"validation_images": len(labels), "batch": batch, "onnxruntime_float32": base, "rows": rows}


def run_study(args, float_folder: Path, work: Path) -> dict:
    """Every operator quantized, one candidate at a time float32, and the library's choice, on validation images."""
    calibration, pixels, labels, reference, reference_map = validation_reference(args, float_folder)
    rows = []
    for name, (method, operators, weights) in study_settings(args).items():
        folder = work / f"study-{len(rows)}"
        started = time.perf_counter()
        record = quantized_folder(float_folder, folder, calibration, method, operators, weights, work)
        seconds = time.perf_counter() - started
        scores = batched_scores(ExportedTagger(folder), pixels)
        errors = score_errors(scores, reference, labels, reference_map)
        interval = map_difference(reference, scores, labels)
        rows.append(
            {
                "setting": name,
                "calibration_method": method,
                "float_operators": list(operators),
                "float_nodes": len(record["float_nodes"]),
                "quantize_seconds": seconds,
                **errors,
                "mAP_change_low": interval["low"],
                "mAP_change_high": interval["high"],
            }
        )
        print(f"{name}: {errors}", flush=True)
    return {
        "validation_images": len(labels),
        "calibration_images": len(calibration.pixel_values),
        "calibration_method": args.calibration_method,
        "float32_validation_mAP": reference_map,
        "rows": rows,
    }


def run_correction(args, float_folder: Path, work: Path) -> dict:
    """Bias correction off and on with each calibration method (Softmax float32 only, the backbone fully quantized),
    then on with the backbone's first stage float32 too; calibrated on the validation split, scored on each of
    `--correction-splits` (never the test split): the training split's images are neither calibration nor
    bias-correction images."""
    calibration, *_ = validation_reference(args, float_folder)
    processor = export_image_processor(args.model, None)
    names = ExportedTagger(float_folder).labels
    splits = {split: split_inputs(args, split, processor, names) for split in args.correction_splits}
    references = {split: batched_scores(ExportedTagger(float_folder), pixels) for split, (pixels, _) in splits.items()}
    settings = [(method, corrected, ()) for method in CALIBRATION_METHODS for corrected in (False, True)]
    settings.append((args.calibration_method, True, first_stage_weights(check_model_folder(args.model))))
    rows = []
    for index, (method, corrected, weights) in enumerate(settings):
        folder = work / f"correction-{index}"
        quantized_folder(float_folder, folder, calibration, method, FLOAT_OPERATORS, weights, work, corrected)
        setting = f"{method}, bias correction {'on' if corrected else 'off'}" + ", stage 0 float32" * bool(weights)
        tagger = ExportedTagger(folder)
        for split, (pixels, labels) in splits.items():
            scores, reference = batched_scores(tagger, pixels), references[split]
            errors = score_errors(scores, reference, labels, multilabel_metrics(reference, labels)["mAP"])
            interval = map_difference(reference, scores, labels)
            rows.append(
                {"setting": setting, "split": split, "images": len(labels), **errors}
                | {"mAP_change_low": interval["low"], "mAP_change_high": interval["high"]}
            )
            print(f"{setting}, {split}: {errors}", flush=True)
    return {"calibration_images": len(calibration.pixel_values), "rows": rows}


def label_set_agreement(scores_a, thresholds_a, scores_b, thresholds_b) -> dict:
    """Per image: are the label sets above the thresholds the same; their mean Jaccard overlap."""
    a, b = scores_a > thresholds_a, scores_b > thresholds_b
    union = (a | b).sum(axis=1)
    jaccard = np.where(union == 0, 1.0, (a & b).sum(axis=1) / np.maximum(union, 1))
    return {"identical_label_sets": float((a == b).all(axis=1).mean()), "mean_jaccard": float(jaccard.mean())}


def figures_at(scores, labels, thresholds) -> dict:
    metrics = multilabel_metrics(scores, labels, threshold=np.asarray(thresholds))
    return {key: metrics[key] for key in ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")} | {
        "per_class_AP": metrics["per_class_AP"]
    }


def run_measure(args, float_folder: Path, work: Path) -> dict:
    """The INT8 folder of `srn-hf export --quantize int8 --data ... --split validation` against the float32 one."""
    int8_folder = work / "int8"
    started = time.perf_counter()
    result = export_quantized(
        args.model,
        int8_folder,
        dataset_sources(args.data, args.options, "validation"),
        calibration_method=args.calibration_method,
        calibration_count=args.calibration_count,
        thresholds_data=(args.data, args.options, "validation"),
    )
    export_seconds = time.perf_counter() - started
    test = load_multilabel_dataset(args.data, **args.options)["test"]
    float_tagger, int8_tagger = ExportedTagger(float_folder), ExportedTagger(int8_folder)
    names = float_tagger.labels
    order = [label_names(test).index(name) for name in names]  # the dataset's label order -> the model's
    float_scores, labels = score_split_exported(float_tagger, test)
    int8_scores, _ = score_split_exported(int8_tagger, test)
    labels = labels[:, order]
    float_figures = figures_at(float_scores, labels, float_tagger.thresholds)
    int8_figures = figures_at(int8_scores, labels, int8_tagger.thresholds)
    int8_float_thresholds = figures_at(int8_scores, labels, float_tagger.thresholds)
    ap_change = [
        (name, b - a)
        for name, a, b in zip(names, float_figures["per_class_AP"], int8_figures["per_class_AP"])
        if a is not None and b is not None
    ]
    return {
        "test_images": len(labels),
        "export_seconds": export_seconds,
        "quantization": result["quantization"],
        "float32": float_figures,
        "int8": int8_figures,
        "int8_at_float32_thresholds": int8_float_thresholds,
        "map_difference": map_difference(float_scores, int8_scores, labels),
        "agreement": label_set_agreement(float_scores, float_tagger.thresholds, int8_scores, int8_tagger.thresholds),
        "score_error": {
            "max": float(np.abs(int8_scores - float_scores).max()),
            "mean": float(np.abs(int8_scores - float_scores).mean()),
        },
        "worst_labels": sorted(ap_change, key=lambda item: item[1])[:5],
        "sizes": {
            name: (folder / "model.onnx").stat().st_size
            for name, folder in (("float32", float_folder), ("int8", int8_folder))
        },
        "weights_bytes": sum(path.stat().st_size for path in Path(args.model).glob("*.safetensors")),
        "speed": measure_speed(args, float_tagger, int8_tagger),
    }


def run_speed(args, float_folder: Path, work: Path) -> dict:
    """The speed part of **measure** alone: the INT8 folder calibrated on the validation split, against float32."""
    export_quantized(
        args.model,
        work / "int8-speed",
        dataset_sources(args.data, args.options, "validation"),
        calibration_method=args.calibration_method,
        calibration_count=args.calibration_count,
    )
    return measure_speed(args, ExportedTagger(float_folder), ExportedTagger(work / "int8-speed"))


def measure_speed(args, float_tagger: ExportedTagger, int8_tagger: ExportedTagger) -> dict:
    """Images per second at each batch size: eager PyTorch float32, ONNX Runtime float32 and INT8, interleaved."""
    model = load_model(args.model).float().eval()
    size = float_tagger.record["input"]["shape"][-1]
    speed = {}
    for batch in args.batch_sizes:
        pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        tensor = torch.from_numpy(pixels)

        def eager(tensor=tensor):
            with torch.inference_mode():
                model(pixel_values=tensor)

        runs = {
            "eager float32": timed_run(eager),
            "onnxruntime float32": timed_run(lambda pixels=pixels: float_tagger.logits(pixels)),
            "onnxruntime int8": timed_run(lambda pixels=pixels: int8_tagger.logits(pixels)),
        }
        times = interleaved_times(runs, args.warmup, args.repeats, f"batch {batch}")
        speed[batch] = {
            name: {"images_per_second": batch / statistics.median(values), "times": values}
            for name, values in times.items()
        }
        print(
            f"batch {batch}: "
            + ", ".join(f"{name} {row['images_per_second']:.2f}/s" for name, row in speed[batch].items()),
            flush=True,
        )
    return speed


def markdown(results: dict) -> str:
    lines = [
        f"CPU: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs; "
        f"load average {results['machine']['load_average']} at the start, {results['load_average_end']} at the end",
        "",
    ]
    study = results.get("study")
    if study:
        lines += [
            f"Float32 parts (validation split, {study['validation_images']} images; calibrated by "
            f"{study['calibration_method']} unless said on {study['calibration_images']}; float32 graph mAP "
            f"{study['float32_validation_mAP']:.2f}):",
            "",
            "| left float32 | float32 nodes | max score error | mean score error | mAP change (95% interval) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['setting']} | {row['float_nodes']} | {row['max_score_error']:.4f} | "
            f"{row['mean_score_error']:.5f} | {row['mAP_change']:+.2f} ({row['mAP_change_low']:+.2f} to "
            f"{row['mAP_change_high']:+.2f}) |"
            for row in study["rows"]
        ]
        lines.append("")
    correction = results.get("correction")
    if correction:
        lines += [
            f"Bias correction (Softmax float32 only; calibrated and corrected on {correction['calibration_images']} "
            "validation images):",
            "",
            "| setting | split (images) | max score error | mean score error | mAP change (95% interval) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['setting']} | {row['split']} ({row['images']}) | {row['max_score_error']:.4f} | "
            f"{row['mean_score_error']:.5f} | {row['mAP_change']:+.2f} ({row['mAP_change_low']:+.2f} to "
            f"{row['mAP_change_high']:+.2f}) |"
            for row in correction["rows"]
        ]
        lines.append("")
    frontier = results.get("frontier")
    if frontier:
        lines += [
            f"Error against speed (validation, {frontier['validation_images']} images; batch {frontier['batch']}, "
            f"ONNX Runtime float32 {frontier['onnxruntime_float32']:.2f} images/s):",
            "",
            "| float32 besides Softmax | nodes | max score error | mean score error | mAP change | images/s | "
            "vs ONNX Runtime float32 |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['setting']} | {row['float_nodes']} | {row['max_score_error']:.4f} | "
            f"{row['mean_score_error']:.5f} | {row['mAP_change']:+.2f} | {row['images_per_second']:.2f} | "
            f"{row['vs_onnxruntime_float32']:.2f}x |"
            for row in frontier["rows"]
        ]
        lines.append("")
    measure = results.get("measure")
    if measure:
        rows = (
            ("ONNX Runtime float32", measure["float32"]),
            ("ONNX Runtime INT8 (its own thresholds)", measure["int8"]),
            ("INT8 at the float32 thresholds", measure["int8_at_float32_thresholds"]),
        )
        difference, sizes = measure["map_difference"], measure["sizes"]
        lines += [
            f"Test split ({measure['test_images']} images):",
            "",
            "| model | mAP | CF1 | OF1 |",
            "|---|---|---|---|",
        ]
        lines += [f"| {name} | {row['mAP']:.2f} | {row['CF1']:.2f} | {row['OF1']:.2f} |" for name, row in rows]
        lines += [
            "",
            f"mAP INT8 - float32: {difference['difference']:+.2f} (95% interval {difference['low']:+.2f} to "
            f"{difference['high']:+.2f}); identical label sets on "
            f"{100 * measure['agreement']['identical_label_sets']:.1f}% of the images (mean Jaccard "
            f"{measure['agreement']['mean_jaccard']:.3f}); score error max {measure['score_error']['max']:.4f}, "
            f"mean {measure['score_error']['mean']:.5f}.",
            "",
            "Worst five labels (AP change, points): "
            + ", ".join(f"{name} {change:+.2f}" for name, change in measure["worst_labels"]),
            "",
            f"model.onnx: float32 {sizes['float32'] / 2**20:.1f} MiB, INT8 {sizes['int8'] / 2**20:.1f} MiB "
            f"({sizes['int8'] / sizes['float32']:.2f}x)",
            "",
        ]
        lines += speed_table(measure["speed"])
    if results.get("speed"):
        lines += ["Speed alone (`--sections speed`):", ""] + speed_table(results["speed"])
    return "\n".join(lines) + "\n"


def speed_table(speed: dict) -> list[str]:
    lines = ["| batch | runtime | images/s | vs ONNX Runtime float32 | vs eager float32 |", "|---|---|---|---|---|"]
    for batch, runs in speed.items():
        base, eager = runs["onnxruntime float32"]["images_per_second"], runs["eager float32"]["images_per_second"]
        lines += [
            f"| {batch} | {name} | {row['images_per_second']:.2f} | {row['images_per_second'] / base:.2f}x | "
            f"{row['images_per_second'] / eager:.2f}x |"
            for name, row in runs.items()
        ]
    return lines + [""]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the trained SRN's folder (save_pretrained)")
    parser.add_argument("--data", required=True, help="its dataset kind (srn_hf.data), with validation and test")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["study", "correction", "frontier", "measure"],
        choices=["study", "correction", "frontier", "measure", "speed"],
    )
    parser.add_argument(
        "--correction-splits", nargs="+", default=["validation", "train"], help="splits the correction section scores"
    )
    parser.add_argument("--calibration-count", type=int, default=256)
    parser.add_argument("--study-images", type=int, help="validation images scored per study setting (all)")
    parser.add_argument("--calibration-method", default=DEFAULT_CALIBRATION_METHOD, choices=CALIBRATION_METHODS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the median is reported (7)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="int8", help="the results files' name, without extension (int8)")
    args = parser.parse_args(argv)
    args.options = parse_data_options(args.data_option)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    srn_hf.register()
    results = {"machine": machine_description(), "settings": {k: v for k, v in vars(args).items() if k != "output_dir"}}
    # relative to the repository: no machine path in the results
    results["settings"]["output_dir"] = os.path.relpath(args.output_dir.resolve(), Path(__file__).resolve().parents[1])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srn-int8-bench-") as scratch:
        work = Path(scratch)
        export_model(args.model, work / "float32", "onnx")
        if "study" in args.sections:
            results["study"] = run_study(args, work / "float32", work)
        if "correction" in args.sections:
            if "test" in args.correction_splits:
                raise SystemExit("--correction-splits: the test split only reports (section measure)")
            results["correction"] = run_correction(args, work / "float32", work)
        if "frontier" in args.sections:
            results["frontier"] = run_frontier(args, work / "float32", work)
        if "measure" in args.sections:
            results["measure"] = run_measure(args, work / "float32", work)
        if "speed" in args.sections:
            results["speed"] = run_speed(args, work / "float32", work)
    results["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - started
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    tables = markdown(results)
    (args.output_dir / f"{args.name}.md").write_text(tables)
    print(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
