"""Where SRN's gain comes from: the controls beside SRN, over seeds, each seed's controls sharing its stage-1 model.

    python benchmarks/ablations.py --seeds 0 1 2                                   # the demo recipe
    python benchmarks/ablations.py --config examples/configs/voc2007.yaml --seeds 0 1 2 --set stage1.epochs=4
    python benchmarks/ablations.py --seeds 0 1 2 --report-only                     # tables and figure of finished runs

For each seed, `examples/train_stages.py` runs as a subprocess (its command line: `--stages`, `--init-from`,
`--set seed=...`), into OUTPUT_DIR/seed-N/:

    srn/          stages 1, 2, 3, 4 of the recipe: SRN, and the stage-1 model every control of the seed starts from
    no-staging/   stage 4 alone from srn/stage-1: all heads and the backbone jointly, for `--no-staging-epochs`
                  epochs, the heads at stage 2's rate (they start untrained), the backbone at stage 4's
    control/      stages 2, 3, 4 from srn/stage-1 with the capacity-matched control head ([`control_forward_heads`])

and the variants compared on the test split are (fused = alpha * a + (1 - alpha) * b on the logits, the recipe's alpha):

    stage 1                 y_cls of srn/stage-1
    y_att alone             y_att of srn/stage-2 (the attention branch on the frozen stage-1 backbone)
    y_cls + y_att fused     stage 1's y_cls fused with stage 2's y_att (no f_sr, no further training)
    y_cls + y_sr fused      stage 1's y_cls fused with stage 3's y_sr: SRN before its joint fine-tuning (stage 4)
    control head alone      control/stage-2: the control head on the frozen stage-1 backbone (y_att's counterpart)
    y_cls + control fused   stage 1's y_cls fused with control/stage-2 (y_cls + y_att's counterpart)
    control (fused)         control/stage-4: alpha * y_cls + (1 - alpha) * the control head
    SRN without staging     no-staging/stage-4
    SRN                     srn/stage-4

All scores are those train_stages.py leaves in each run's predictions/ (sigmoid scores of the stage's prediction;
fused logits are recovered from them, clipped at float32's resolution). Each variant's test mAP, CF1 and OF1
(`srn_hf.metrics.multilabel_metrics`) are reported as mean and spread over the seeds, with the paired bootstrap
difference of mAP (`srn_hf.metrics.map_difference`) to stage 1 and to the best control, per seed. Writes
`ablations.json`, `ablations.md` and `ablations.png` to `--results-dir` (default benchmarks/results).

A run that is already complete (its metrics.json exists) is not run again: an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from srn_hf.metrics import map_difference, multilabel_metrics
from srn_hf.modeling_srn import SRNModel, SRNModelOutput
from srn_hf.recipe import load_recipe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_utils import plot_intervals, plot_seed_scores  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
TRAIN_STAGES = REPOSITORY / "examples" / "train_stages.py"
DEFAULT_CONFIG = REPOSITORY / "examples" / "configs" / "demo.yaml"
METRICS = ("mAP", "CF1", "OF1")
# (name, run, source): source is a stage's test scores, or ("fuse", a, b) of two of them.
VARIANTS = (
    ("stage 1", "srn", 1),
    ("y_att alone", "srn", 2),
    ("y_cls + y_att fused", "srn", ("fuse", 1, 2)),
    ("y_cls + y_sr fused", "srn", ("fuse", 1, 3)),
    ("control head alone", "control", 2),
    ("y_cls + control head fused", "control", ("fuse", 1, 2)),
    ("control (fused)", "control", 4),
    ("SRN without staging", "no-staging", 4),
    ("SRN", "srn", 4),
)
# What SRN's gain over stage 1 is made of: consecutive paired differences (later variant minus earlier) that add up
# to SRN minus stage 1, then two comparisons beside the chain. (step, variant, minus variant)
GAIN_STEPS = (
    ("a second head on X, fused with y_cls (no label attention)", "y_cls + control head fused", "stage 1"),
    (
        "label attention in that head (y_att instead of the control head)",
        "y_cls + y_att fused",
        "y_cls + control head fused",
    ),
    ("f_sr on the attention maps (stage 3)", "y_cls + y_sr fused", "y_cls + y_att fused"),
    ("joint fine-tuning with the backbone (stage 4)", "SRN", "y_cls + y_sr fused"),
)
BESIDE_THE_CHAIN = (
    ("SRN against its capacity-matched control after all stages", "SRN", "control (fused)"),
    ("the staging: SRN against SRN trained jointly from stage 1", "SRN", "SRN without staging"),
)
CONTROLS = (
    "y_att alone",
    "y_cls + y_att fused",
    "control head alone",
    "y_cls + control head fused",
    "control (fused)",
    "SRN without staging",
)


def control_forward_heads(self: SRNModel, features: torch.Tensor, classifier_features: torch.Tensor) -> SRNModelOutput:
    """The capacity-matched control: SRN's very layers (the same parameters and FLOPs) without its label attention.

    f_att's maps Z and the confidence maps S are pooled over the positions instead of weighting S by the
    attention A = softmax(Z): the stage-2 prediction is GAP(Z) + GAP(S), a plain classifier on X with two conv
    towers; f_sr gets the per-position label scores sigmoid(Z + S) instead of U = A * sigmoid(S). Trained in the
    same stages (2: trunk, f_att, S; 3: f_sr; 4: everything) and fused with y_cls at the same alpha. Its
    `attention_maps` (for the pointing game only; nothing uses them) are softmax(Z + S) over the positions: where
    its per-position label scores are highest, as class activation maps.
    """
    cls_logits = self.classifier(classifier_features.mean(dim=(2, 3)))
    features = self.attention_trunk(features)
    label_maps, confidence_maps = self.attention(features), self.confidence(features)
    att_logits = label_maps.mean(dim=(2, 3)) + confidence_maps.mean(dim=(2, 3))
    position_scores = label_maps + confidence_maps
    sr_logits = self.spatial_regularization(torch.sigmoid(position_scores))
    alpha = self.config.alpha
    return SRNModelOutput(
        logits=alpha * cls_logits + (1 - alpha) * sr_logits,
        cls_logits=cls_logits,
        att_logits=att_logits,
        sr_logits=sr_logits,
        attention_maps=position_scores.flatten(2).softmax(-1).view_as(position_scores),
    )


def train_control(argv: list[str]) -> None:
    """train_stages.py's `main(argv)` with the control head in place of SRN's branch (this process only)."""
    SRNModel.forward_heads = control_forward_heads
    spec = importlib.util.spec_from_file_location("train_stages", TRAIN_STAGES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def run_commands(args, seed: int) -> list[tuple[str, list[str]]]:
    """The three train_stages runs of one seed: (run name, command)."""
    seed_dir = args.output_dir / f"seed-{seed}"
    stage1 = str(seed_dir / "srn" / "stage-1")
    common = ["--config", str(args.config), "--overwrite", "--set", f"seed={seed}", "--set", "training.log_with=none"]
    for override in args.set + ([f"data.max_eval_samples={args.test_images}"] if args.test_images else []):
        common += ["--set", override]
    python = [sys.executable]
    stage2_lr = load_recipe(args.config, args.set).stage2.lr
    return [
        ("srn", python + [str(TRAIN_STAGES), *common, "--output-dir", str(seed_dir / "srn")]),
        (
            "no-staging",
            python
            + [
                str(TRAIN_STAGES),
                *common,
                "--output-dir",
                str(seed_dir / "no-staging"),
                "--stages",
                "4",
                "--init-from",
                stage1,
                "--set",
                f"stage4.epochs={args.no_staging_epochs}",
                "--set",
                f"stage4.lr={stage2_lr}",
            ],
        ),
        (
            "control",
            python
            + [
                str(Path(__file__).resolve()),
                "--train-control",
                *common,
                "--output-dir",
                str(seed_dir / "control"),
                "--stages",
                "2,3,4",
                "--init-from",
                stage1,
            ],
        ),
    ]


def run_seed(args, seed: int) -> None:
    """Runs (or skips, when finished) the three trainings of `seed`, logging each to RUN/train.log."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }
    for name, command in run_commands(args, seed):
        if name not in args.runs:
            continue
        folder = args.output_dir / f"seed-{seed}" / name
        if (folder / "metrics.json").exists():
            print(f"seed {seed}, {name}: done before, kept")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        print(f"seed {seed}, {name}: training (log: {folder / 'train.log'})", flush=True)
        with open(folder / "train.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPOSITORY)


def logits_of(scores: torch.Tensor) -> np.ndarray:
    """The logits behind sigmoid scores (float32 scores clipped at their resolution next to 0 and 1)."""
    scores = scores.double().clamp(np.finfo(np.float32).eps / 2, 1 - np.finfo(np.float32).eps / 2)
    return torch.logit(scores).numpy()


def variant_scores(
    seed_dir: Path, alpha: float, test_images: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each available variant's test scores (N, C) in one seed's folder, and the labels; with `test_images`, of the
    first that many test images only (the images a run with `data.max_eval_samples` scores)."""
    scores, labels = {}, None
    for name, run, source in VARIANTS:
        stages = source[1:] if isinstance(source, tuple) else (source,)
        # Stage 1 is the srn run's, shared by every run of the seed.
        files = [
            seed_dir / ("srn" if stage == 1 else run) / "predictions" / f"stage-{stage}-test.safetensors"
            for stage in stages
        ]
        if not all(file.exists() for file in files):
            continue
        loaded = [{key: value[:test_images] for key, value in load_file(file).items()} for file in files]
        labels = loaded[0]["labels"].numpy()
        if isinstance(source, tuple):
            fused = alpha * logits_of(loaded[0]["scores"]) + (1 - alpha) * logits_of(loaded[1]["scores"])
            scores[name] = 1 / (1 + np.exp(-fused))
        else:
            scores[name] = loaded[0]["scores"].double().numpy()
    return scores, labels


def summarise(args) -> dict:
    """Per seed and variant: test mAP, CF1, OF1; the mAP differences to stage 1 and to the best control."""
    alpha = load_recipe(args.config, args.set).model.alpha
    per_seed = {}
    for seed in args.seeds:
        scores, labels = variant_scores(args.output_dir / f"seed-{seed}", alpha, args.test_images)
        if scores:
            per_seed[seed] = (scores, labels)
    results = {"seeds": {}, "variants": {}}
    for seed, (scores, _) in per_seed.items():
        results["seeds"][seed] = {
            name: {metric: multilabel_metrics(value, per_seed[seed][1])[metric] for metric in METRICS}
            for name, value in scores.items()
        }
    names = [name for name, _, _ in VARIANTS if any(name in scores for scores, _ in per_seed.values())]
    for name in names:
        figures = [results["seeds"][seed][name] for seed in results["seeds"] if name in results["seeds"][seed]]
        results["variants"][name] = {
            metric: {
                "mean": float(np.mean([f[metric] for f in figures])),
                "std": float(np.std([f[metric] for f in figures])),
                "min": float(min(f[metric] for f in figures)),
                "max": float(max(f[metric] for f in figures)),
            }
            for metric in METRICS
        }
        results["variants"][name]["seeds"] = len(figures)
    controls = [name for name in CONTROLS if name in results["variants"]]
    results["best_control"] = max(controls, key=lambda n: results["variants"][n]["mAP"]["mean"]) if controls else None
    results["differences"] = differences(per_seed, names, results["best_control"])
    results["gain_steps"] = gain_steps(per_seed)
    results["pointing_game"] = pointing_games(args)
    return results


def pointing_games(args) -> dict:
    """`{model: {seed: overall hit rate}}` of the pointing games that the runs stored (datasets with boxes): the
    attention maps after stage 2 and stage 4 of SRN, the control's maps after its stage 4, and the two baselines."""
    models = {
        "SRN stage 2 (A)": ("srn", 2),
        "SRN stage 4 (A)": ("srn", 4),
        "control stage 4 (softmax(Z + S))": ("control", 4),
    }
    table = {}
    for seed in args.seeds:
        for model, (run, stage) in models.items():
            path = args.output_dir / f"seed-{seed}" / run / "metrics.json"
            records = json.loads(path.read_text())["stages"] if path.exists() else []
            game = next((r.get("test_pointing_game") for r in records if r["stage"] == stage), None)
            if game:
                table.setdefault(model, {})[seed] = game["attention"]["overall"]
                for baseline in ("centre", "mean_box_centre"):
                    table.setdefault(f"baseline: {baseline}", {})[seed] = game[baseline]["overall"]
    return table


def paired_differences(per_seed: dict, variant: str, reference: str) -> list[dict]:
    """`map_difference(reference, variant)` (test mAP of `variant` minus `reference`, with its paired bootstrap
    interval) in each seed that has both, with the seed."""
    return [
        dict(seed=seed, **map_difference(scores[reference], scores[variant], labels))
        for seed, (scores, labels) in per_seed.items()
        if reference in scores and variant in scores
    ]


def per_seed_text(runs: list[dict]) -> str:
    """`seed 0: +1.23 [+0.45, +2.01]; seed 1: ...` of `paired_differences`."""
    return "; ".join(f"seed {r['seed']}: {r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]" for r in runs)


def differences(per_seed: dict, names: list[str], best_control: str | None) -> dict:
    """`{reference: {variant: [per-seed map_difference(reference, variant)]}}` for stage 1 and the best control."""
    table = {}
    for reference in ("stage 1", best_control):
        if reference is None:
            continue
        table[reference] = {}
        for name in names:
            if name == reference:
                continue
            runs = paired_differences(per_seed, name, reference)
            if runs:
                table[reference][name] = runs
    return table


def gain_steps(per_seed: dict) -> list[dict]:
    """Each of `GAIN_STEPS` and `BESIDE_THE_CHAIN` with its per-seed paired `map_difference` (seeds that have both
    variants), in order: the chain's differences add up to SRN minus stage 1 in each seed."""
    steps = []
    for kind, table in (("chain", GAIN_STEPS), ("beside", BESIDE_THE_CHAIN)):
        for step, variant, reference in table:
            runs = paired_differences(per_seed, variant, reference)
            if runs:
                steps.append({"step": step, "kind": kind, "variant": variant, "minus": reference, "runs": runs})
    return steps


def gain_steps_markdown(steps: list[dict]) -> list[str]:
    """The table of `gain_steps`: each step's mean difference over the seeds, and per seed with its interval."""
    lines = [
        "| what SRN's test mAP gain over stage 1 is made of | test mAP difference | mean | per seed: difference "
        "[95 % paired bootstrap interval] |",
        "|---|---|---|---|",
    ]
    for kind in ("chain", "beside"):
        for row in (step for step in steps if step["kind"] == kind):
            mean = np.mean([r["difference"] for r in row["runs"]])
            lines.append(
                f"| {row['step']} | {row['variant']} minus {row['minus']} | {mean:+.2f} "
                f"| {per_seed_text(row['runs'])} |"
            )
        if kind == "chain" and any(step["kind"] == "beside" for step in steps):
            lines.append("| *beside the chain* | | | |")
    return lines + [""]


def markdown(results: dict) -> str:
    """The README-style tables: each variant's test figures over the seeds, then its mAP differences."""
    lines = ["| variant | seeds | test mAP | test CF1 | test OF1 |", "|---|---|---|---|---|"]
    for name, figures in results["variants"].items():
        cells = [
            f"{figures[m]['mean']:.2f} ± {figures[m]['std']:.2f} ({figures[m]['min']:.2f} .. {figures[m]['max']:.2f})"
            for m in METRICS
        ]
        lines.append(f"| {name} | {figures['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± standard deviation over the seeds (min .. max)", ""]
    for reference, rows in results["differences"].items():
        lines += [
            f"| test mAP of ... minus {reference} | mean | per seed: difference [95 % paired bootstrap interval] |",
            "|---|---|---|",
        ]
        for name, runs in rows.items():
            lines.append(f"| {name} | {np.mean([r['difference'] for r in runs]):+.2f} | {per_seed_text(runs)} |")
        lines.append("")
    if results.get("gain_steps"):
        lines += gain_steps_markdown(results["gain_steps"])
    if results.get("pointing_game"):
        lines += [
            "| pointing game, test split (% of present labels whose map peaks in one of their boxes) "
            "| mean | per seed |",
            "|---|---|---|",
        ]
        for model, seeds in results["pointing_game"].items():
            per_seed = "; ".join(f"seed {seed}: {value:.1f}" for seed, value in seeds.items())
            lines.append(f"| {model} | {np.mean(list(seeds.values())):.1f} | {per_seed} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Two panels: each variant's test mAP per seed (dots) and mean (bar); its mAP over stage 1 with the intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scores_axis, gain_axis, steps_axis) = plt.subplots(1, 3, figsize=(19, 5.2))
    scores = {
        name: [results["seeds"][seed][name]["mAP"] for seed in results["seeds"] if name in results["seeds"][seed]]
        for name in results["variants"]
    }
    plot_seed_scores(scores_axis, scores)
    plot_intervals(
        gain_axis,
        results["differences"].get("stage 1", {}),
        ylabel="test mAP minus stage 1 (points)",
        title="gain over stage 1 (95 % paired bootstrap intervals)",
    )
    plot_gain_steps(steps_axis, [step for step in results.get("gain_steps", []) if step["kind"] == "chain"])
    for axis in (scores_axis, gain_axis, steps_axis):
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_gain_steps(axis, chain: list[dict]) -> None:
    """A waterfall of the chain of `GAIN_STEPS`: each step's mean test mAP difference as a bar starting where the
    previous one ended (from stage 1 at 0 to SRN), each seed's difference as a dot on its bar."""
    level = 0.0
    for position, row in enumerate(chain):
        differences = [run["difference"] for run in row["runs"]]
        mean = float(np.mean(differences))
        axis.bar(position, mean, bottom=level, color="tab:green" if mean >= 0 else "tab:red", alpha=0.6)
        axis.scatter([position] * len(differences), [level + d for d in differences], color="k", s=14, zorder=3)
        level += mean
    axis.axhline(0, color="grey", linewidth=1)
    labels = [row["step"].split(" (")[0] for row in chain]
    axis.set_xticks(range(len(chain)), labels, rotation=30, ha="right")
    axis.set(ylabel="test mAP over stage 1 (points)", title="what the gain is made of (bars: mean over seeds)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="recipe of train_stages.py (default: the demo)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, as train_stages.py's"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs/ablations"), help="the runs, OUTPUT_DIR/seed-N/RUN"
    )
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["srn", "no-staging", "control"],
        choices=["srn", "no-staging", "control"],
        help="which trainings to run (the srn run is needed by the others: it holds the stage-1 model)",
    )
    parser.add_argument("--no-staging-epochs", type=int, default=3, help="epochs of the joint run (default 3)")
    parser.add_argument(
        "--test-images",
        type=int,
        help="score every variant on the first N test images only (the "
        "trainings get --set data.max_eval_samples=N); default: the whole test split",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each training (OMP_NUM_THREADS)")
    parser.add_argument("--report-only", action="store_true", help="no training: tables and figure of the runs found")
    args = parser.parse_args(argv)
    if args.threads < 1:  # (this script is loaded without benchmarks/ on the path: probes.check_threads's words)
        parser.exit(2, f"{parser.prog}: error: --threads {args.threads}: must be >= 1\n")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.report_only:
        for seed in args.seeds:
            run_seed(args, seed)
    results = summarise(args)
    if not results["variants"]:
        raise SystemExit(f"error: no finished run under {args.output_dir}")
    config = args.config.resolve()
    config = config.relative_to(REPOSITORY) if config.is_relative_to(REPOSITORY) else config
    results["recipe"] = {
        "config": str(config),
        "set": args.set,
        "no_staging_epochs": args.no_staging_epochs,
        "test_images": args.test_images or "all",
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "ablations.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.results_dir / "ablations.md").write_text(table + "\n")
    plot(results, args.results_dir / "ablations.png")
    print(table)
    print(f"best control: {results['best_control']}; ablations.json, ablations.md, ablations.png in {args.results_dir}")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train-control"]:
        train_control(sys.argv[2:])
    else:
        main()
