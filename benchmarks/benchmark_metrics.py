"""Speed of the paired bootstrap interval of an mAP gain (`srn_hf.metrics.map_difference`), against the
per-resample loop.

    python benchmarks/benchmark_metrics.py            # 3,000 x 13 and 40,000 x 80 scores (3.5 minutes, 2 busy cores)
    python benchmarks/benchmark_metrics.py --quick    # a smoke run on small arrays

Measured in one process, interleaved (one run of each method per round, the median of `--repeats` rounds):

| method | what it computes |
|---|---|
| `map_difference` | the `"standard"` convention: `scipy.stats.bootstrap(vectorized=True)`, each class ranked once, every resample's AP from image counts |
| per-resample loop | the same interval as it was computed before: `scipy.stats.bootstrap(vectorized=False)`, sklearn's `average_precision_score` on each resample's rows (`srn_hf.metrics.resampled_map_difference`) |

Both draw the same resamples (same seed), so they must give the same difference and interval; the largest gap
is reported. On 40,000 x 80 the loop takes about 3 s per resample, so it runs `--large-loop-resamples` (5)
resamples against `map_difference` on the same 5 (where `map_difference`'s fixed cost, ranking every class once,
weighs most); `map_difference` is also timed with the full `--resamples` (1,000), and the loop's time for those
is extrapolated (linear in the resamples). The scores are
synthetic: two correlated models (the second one better) on the same long-tailed labels, stored as float32.
Results: `benchmarks/results/metrics.json` and `metrics.md`.
"""  # noqa: E501 - Markdown table rows cannot be wrapped

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_thresholds import synthetic_scores  # noqa: E402
from benchmark_utils import machine_description  # noqa: E402
from probes import interleaved_results, tracemalloc_peak_mib  # noqa: E402

from srn_hf.metrics import map_difference, resampled_map_difference  # noqa: E402


def two_models(images: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels) float32 scores of a weaker and a better model on the same 0/1 labels."""
    scores_a, truth = synthetic_scores(images, labels, seed)
    logits_a = np.log(scores_a) - np.log1p(-scores_a)
    noise = np.random.default_rng(seed + 1).normal(0.0, 0.6, truth.shape)
    scores_b = (1 / (1 + np.exp(-(logits_a + 0.6 * truth + noise)))).astype(np.float32)
    return scores_a, scores_b, truth


def per_resample_loop(scores_a, scores_b, labels, n_resamples: int, seed: int = 0) -> dict:
    """The reference: `map_difference`'s interval computed one resample at a time with sklearn's AP."""
    positives = labels > 0.5
    images = np.arange(len(positives))
    statistic = partial(
        resampled_map_difference,
        scores_a.astype(np.float64),
        scores_b.astype(np.float64),
        positives,
        convention="standard",
    )
    interval = bootstrap(
        (images,),
        statistic,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return {"difference": statistic(images), "low": float(interval.low), "high": float(interval.high)}


def largest_gap(result: dict, reference: dict) -> float:
    """The largest |map_difference - loop| over the difference and the interval's ends, in mAP points."""
    return max(abs(result[key] - reference[key]) for key in ("difference", "low", "high"))


def compare(scores_a, scores_b, labels, n_resamples: int, repeats: int) -> dict:
    """Both methods on the same `n_resamples` resamples, interleaved: seconds, speed-up, largest gap."""
    runs = interleaved_results(
        {
            "map_difference": lambda: map_difference(scores_a, scores_b, labels, n_resamples=n_resamples),
            "per-resample loop": lambda: per_resample_loop(scores_a, scores_b, labels, n_resamples),
        },
        repeats,
    )
    seconds = {name: entry["seconds"] for name, entry in runs.items()}
    return {
        "images": len(labels),
        "labels": labels.shape[1],
        "resamples": n_resamples,
        "seconds": seconds,
        "times": {name: entry["times"] for name, entry in runs.items()},
        "speedup": seconds["per-resample loop"] / seconds["map_difference"],
        "largest gap (mAP points)": largest_gap(runs["map_difference"]["result"], runs["per-resample loop"]["result"]),
        "map_difference": {key: runs["map_difference"]["result"][key] for key in ("difference", "low", "high")},
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, nargs=2, default=[3_000, 13], metavar=("IMAGES", "LABELS"))
    parser.add_argument("--large", type=int, nargs=2, default=[40_000, 80], metavar=("IMAGES", "LABELS"))
    parser.add_argument("--resamples", type=int, default=1_000, help="bootstrap resamples (map_difference's default)")
    parser.add_argument("--large-loop-resamples", type=int, default=5, help="resamples of the loop on the large case")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the median is reported")
    parser.add_argument("--quick", action="store_true", help="small arrays, few resamples, 1 round: a smoke run")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large, args.resamples, args.large_loop_resamples, args.repeats = (
            [300, 5],
            [2_000, 20],
            50,
            3,
            1,
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    small, large = two_models(*args.small), two_models(*args.large)
    print(f"small case {args.small}, {args.resamples} resamples, {args.repeats} rounds")
    small_comparison = compare(*small, args.resamples, args.repeats)
    print(f"large case {args.large}, {args.large_loop_resamples} resamples, {args.repeats} rounds")
    large_comparison = compare(*large, args.large_loop_resamples, args.repeats)
    print(f"large case, map_difference alone with {args.resamples} resamples")
    large_full = interleaved_results({"map_difference": lambda: map_difference(*large, n_resamples=args.resamples)}, 1)
    loop_per_resample = large_comparison["seconds"]["per-resample loop"] / args.large_loop_resamples
    report = {
        "machine": machine_description(),
        "repeats": args.repeats,
        "small": small_comparison,
        "large": large_comparison,
        "large_full": {
            "resamples": args.resamples,
            "map_difference seconds": large_full["map_difference"]["seconds"],
            "per-resample loop seconds, extrapolated": loop_per_resample * args.resamples,
            "speedup, extrapolated": loop_per_resample * args.resamples / large_full["map_difference"]["seconds"],
            # the peak is the one of a batch of resamples: two batches show it
            "map_difference peak MiB": tracemalloc_peak_mib(
                lambda: map_difference(*large, n_resamples=min(args.resamples, 100))
            ),
        },
    }
    write_results(report, Path(args.output_dir))
    return report


def write_results(report: dict, output_dir: Path) -> None:
    """metrics.json (every figure and timing) and metrics.md (the table), printed too."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    machine, full = report["machine"], report["large_full"]
    rows = [
        f"| {case['images']:,} x {case['labels']} | {case['resamples']:,} | {case['seconds']['per-resample loop']:.2f} "
        f"| {case['seconds']['map_difference']:.3f} | {case['speedup']:.0f} x "
        f"| {case['largest gap (mAP points)']:.1e} |"
        for case in (report["small"], report["large"])
    ]
    lines = [
        f"Paired bootstrap interval of an mAP gain ({machine['cpu']}, {machine['logical_cpus']} logical CPUs, load "
        f"average {machine['load_average'][0]:.1f} at the start; median of {report['repeats']} interleaved rounds)",
        "",
        "| scores | resamples | per-resample loop (s) | map_difference (s) | map_difference is faster by "
        "| largest gap (points) |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| {report['large']['images']:,} x {report['large']['labels']} | {full['resamples']:,} "
        f"| {full['per-resample loop seconds, extrapolated']:.0f} (extrapolated) "
        f"| {full['map_difference seconds']:.2f} "
        f"| {full['speedup, extrapolated']:.0f} x | |",
        "",
        f"Peak memory of map_difference on {report['large']['images']:,} x {report['large']['labels']} (tracemalloc, "
        f"inputs' float64 copies included): {full['map_difference peak MiB']:.0f} MiB.",
    ]
    (output_dir / "metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
