"""Speed of threshold calibration (`srn_hf.thresholds.calibrate_thresholds`) on COCO-sized scores, against baselines.

    python benchmarks/benchmark_thresholds.py            # 40,000 images x 80 labels (about a minute on 2 cores)
    python benchmarks/benchmark_thresholds.py --quick    # a smoke run on small arrays

Measured in one process, interleaved (one run of each method per round, the median of `--repeats` rounds):

| method | what it computes |
|---|---|
| `calibrate_thresholds` | every label's F1-optimal threshold, the OF1-optimal global one, each label's P / R / F1 |
| `precision_recall_curve` loop | the same optimum, the way it is usually written: sklearn's `precision_recall_curve` per label, F1 from its arrays, argmax (and once more on all pairs pooled for the global threshold) |
| 0.01 grid | the common shortcut: 101 thresholds 0, 0.01, ..., 1 tried on every label (a vectorised comparison per threshold); not exact |
| exhaustive search | the definition: every distinct score of a label tried as its threshold (O(N^2) per label), on the first `--exhaustive-images` images only |

The scores are synthetic but shaped like a real model's: 80 labels with COCO-like frequencies (45 % down to
0.2 %), sigmoid scores of a noisy logit that is higher for positives, stored as float32 as a model returns them.
Each baseline's result is checked against `calibrate_thresholds`' (the same best F1 per label; for the grid, how
much F1 it loses). Results: `benchmarks/results/thresholds.json` and `thresholds.md`.
"""  # noqa: E501 - Markdown table rows cannot be wrapped

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_utils import machine_description  # noqa: E402
from probes import interleaved_results, tracemalloc_peak_mib  # noqa: E402

from srn_hf.thresholds import calibrate_thresholds  # noqa: E402


def synthetic_scores(images: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) float32 sigmoid scores and 0/1 labels with long-tailed label frequencies."""
    rng = np.random.default_rng(seed)
    frequency = np.geomspace(0.45, 0.002, labels)
    truth = rng.random((images, labels)) < frequency
    logits = 2.5 * truth - 2.0 + rng.normal(0.0, 1.2, (images, labels)) + rng.normal(0.0, 0.5, labels)
    return (1 / (1 + np.exp(-logits))).astype(np.float32), truth.astype(np.int64)


def pr_curve_loop(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per label: sklearn's precision_recall_curve, F1 at each threshold, its argmax; then the pooled global one."""

    def best(column_scores, column_labels):
        precision, recall, thresholds = precision_recall_curve(column_labels, column_scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        index = int(np.argmax(f1))
        return thresholds[index], f1[index]

    found = [best(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    global_threshold, _ = best(scores.ravel(), labels.ravel())
    return np.array([t for t, _ in found]), np.array([f for _, f in found]), float(global_threshold)


def grid_search(scores: np.ndarray, labels: np.ndarray, steps: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The best of `steps` evenly spaced thresholds per label (score >= t), vectorised over labels."""
    positives = labels.astype(bool)
    support = positives.sum(axis=0)
    grid = np.linspace(0.0, 1.0, steps)
    f1 = np.empty((steps, scores.shape[1]))
    for index, threshold in enumerate(grid):
        predicted = scores >= threshold
        f1[index] = 2 * (predicted & positives).sum(axis=0) / np.maximum(predicted.sum(axis=0) + support, 1)
    best = np.argmax(f1, axis=0)
    return grid[best], f1[best, np.arange(scores.shape[1])]


def exhaustive_search(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The definition: each distinct score of a label tried as the threshold (score >= t); the best F1 per label."""
    best_f1 = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        column, positives = scores[:, c], labels[:, c].astype(bool)
        candidates = np.unique(column)
        predicted = column[None, :] >= candidates[:, None]  # one row per candidate threshold
        f1 = 2 * (predicted & positives).sum(axis=1) / (predicted.sum(axis=1) + positives.sum())
        best_f1[c] = f1.max()
    return best_f1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40_000, help="validation images (default: 40000, COCO val2014)")
    parser.add_argument("--labels", type=int, default=80, help="labels (default: 80, COCO)")
    parser.add_argument(
        "--exhaustive-images", type=int, default=2_000, help="images of the exhaustive-search comparison"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--quick", action="store_true", help="small arrays and 2 rounds: a smoke run")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.labels, args.exhaustive_images, args.repeats = 2_000, 10, 300, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    scores, labels = synthetic_scores(args.images, args.labels)
    print(f"calibrating {args.images} x {args.labels} scores, {args.repeats} rounds")
    full = interleaved_results(
        {
            "calibrate_thresholds": lambda: calibrate_thresholds(scores, labels, min_positives=1),
            "precision_recall_curve loop": lambda: pr_curve_loop(scores, labels),
            "0.01 grid": lambda: grid_search(scores, labels),
        },
        args.repeats,
    )
    ours = full["calibrate_thresholds"]["result"]
    _, pr_f1, pr_global = full["precision_recall_curve loop"]["result"]
    _, grid_f1 = full["0.01 grid"]["result"]

    subset_scores, subset_labels = scores[: args.exhaustive_images], labels[: args.exhaustive_images]
    subset = interleaved_results(
        {
            "calibrate_thresholds": lambda: calibrate_thresholds(subset_scores, subset_labels, min_positives=1),
            "exhaustive search": lambda: exhaustive_search(subset_scores, subset_labels),
        },
        max(1, args.repeats // 2),
    )
    exhaustive_f1 = subset["exhaustive search"]["result"]
    subset_f1 = subset["calibrate_thresholds"]["result"].f1
    tuned = subset_labels.sum(axis=0) > 0

    seconds = {name: entry["seconds"] for name, entry in full.items()}
    report = {
        "machine": machine_description(),
        "images": args.images,
        "labels": args.labels,
        "repeats": args.repeats,
        "seconds": seconds,
        "times": {name: entry["times"] for name, entry in full.items()},
        "speedup_over": {
            name: value / seconds["calibrate_thresholds"]
            for name, value in seconds.items()
            if name != "calibrate_thresholds"
        },
        "peak_mib": {
            "calibrate_thresholds": tracemalloc_peak_mib(lambda: calibrate_thresholds(scores, labels, min_positives=1)),
            "precision_recall_curve loop": tracemalloc_peak_mib(lambda: pr_curve_loop(scores, labels)),
        },
        "checks": {
            "max |F1 - precision_recall_curve F1| over labels": float(np.max(np.abs(ours.f1 - pr_f1))),
            "global threshold, calibrate_thresholds / precision_recall_curve": [ours.threshold, pr_global],
            "mean F1 lost by the 0.01 grid (points)": float(100 * np.mean(ours.f1 - grid_f1)),
            "largest F1 lost by the 0.01 grid on one label (points)": float(100 * np.max(ours.f1 - grid_f1)),
        },
        "exhaustive": {
            "images": int(len(subset_scores)),
            "seconds": {name: entry["seconds"] for name, entry in subset.items()},
            "speedup": subset["exhaustive search"]["seconds"] / subset["calibrate_thresholds"]["seconds"],
            "max |F1 - exhaustive F1| over labels": float(np.max(np.abs(subset_f1[tuned] - exhaustive_f1[tuned]))),
        },
    }
    write_results(report, Path(args.output_dir))
    return report


def write_results(report: dict, output_dir: Path) -> None:
    """thresholds.json (every figure and timing) and thresholds.md (the table), printed too."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "thresholds.json").write_text(json.dumps(report, indent=2))
    exhaustive = report["exhaustive"]
    lines = [
        f"Threshold calibration of {report['images']:,} x {report['labels']} scores "
        f"({report['machine']['cpu']}, {report['machine']['logical_cpus']} logical CPUs, load average "
        f"{report['machine']['load_average'][0]:.1f} at the start; median of {report['repeats']} interleaved rounds)",
        "",
        "| method | seconds | calibrate_thresholds is faster by |",
        "|---|---|---|",
        *(
            f"| {name} | {value:.3f} | {report['speedup_over'].get(name, 1.0):.1f} x |"
            for name, value in report["seconds"].items()
        ),
        f"| exhaustive search, first {exhaustive['images']:,} images "
        f"| {exhaustive['seconds']['exhaustive search']:.3f} "
        f"(calibrate_thresholds {exhaustive['seconds']['calibrate_thresholds']:.4f}) | {exhaustive['speedup']:.0f} x |",
        "",
        f"Peak memory (tracemalloc): calibrate_thresholds {report['peak_mib']['calibrate_thresholds']:.0f} MiB, "
        f"precision_recall_curve loop {report['peak_mib']['precision_recall_curve loop']:.0f} MiB.",
        "",
        "Checks: "
        + "; ".join(f"{name}: {value}" for name, value in report["checks"].items())
        + f"; max |F1 - exhaustive F1| over labels: {exhaustive['max |F1 - exhaustive F1| over labels']}.",
    ]
    (output_dir / "thresholds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
