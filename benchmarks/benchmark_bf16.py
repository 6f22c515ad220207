"""The fast path and SRN's branch: SRN against the plain timm classifier in float32 and in bf16 + channels-last,
side by side in one process, and where the branch's time goes in bf16.

    python benchmarks/benchmark_bf16.py   # SRN-ResNet-101 at 224, batch 8, 80 labels (about 10 minutes on 2 cores)
    python benchmarks/benchmark_bf16.py --quick --backbone resnet10t --image-size 64 --batch-size 2  # a smoke run

1. Ratios: SRN (`SRNForImageClassification`) and the plain timm classifier on the same backbone run interleaved,
   one forward each per round, in float32 (default layout) and on the fast path ([`srn_hf.fast`]: channels-last
   weights, bf16 autocast). Every forward is timed by the wall clock and by the process's CPU time (the work of
   both threads: what other processes on a shared machine take from it slows the wall clock, not this). Reported
   are the medians, SRN / timm in each precision, each model's fast-path gain (float32 / bf16) and SRN's gain
   against timm's, and SRN / timm round by round.
2. The branch in bf16: every aten operation of SRN's heads (`SRNModel.forward_branches` on the backbone's maps X
   and F: f_cls, f_att, the confidence maps S, A, U, f_sr, the fusion) on the fast path, with its inputs' and
   output's dtype and memory layout and its share of the heads' CPU time (medians over `--repeats` forwards), and
   the heads' share of SRN's forward.

Writes `<name>.json` (every single timing) and `<name>.md` (the tables) to `--output-dir`; `--report-from
results/bf16_branch.json` rewrites the tables from a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

# Passive OpenMP waiting, as in benchmark_srn.py: spinning threads make timings on a shared machine meaningless.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from benchmark_utils import build_model, count_flops, machine_description  # noqa: E402
from probes import OperationLog, check_threads, interleaved_times, wall_and_cpu_run  # noqa: E402

from srn_hf.fast import autocast_context, fast_inference  # noqa: E402

PRECISIONS = ("float32", "bf16_channels_last")
MODELS = ("srn", "timm")


def forward_of(model: torch.nn.Module, pixel_values: torch.Tensor, fast: bool):
    """One inference forward pass, under bf16 autocast on the fast path."""

    def forward():
        with torch.inference_mode(), autocast_context(enabled=fast):
            return model(pixel_values)

    return forward


CLOCKS = ("wall", "cpu")  # the order of the figures in each timing: wall-clock seconds, process CPU seconds


def measure_ratios(models: dict, pixel_values: torch.Tensor, warmup: int, repeats: int) -> dict:
    """SRN and timm interleaved in each precision: medians, SRN / timm (of the medians and round by round), and each
    model's fast-path gain."""
    results = {}
    for precision in PRECISIONS:
        fast = precision != "float32"
        if fast:
            models = {name: fast_inference(model) for name, model in models.items()}
        runs = {name: wall_and_cpu_run(forward_of(model, pixel_values, fast)) for name, model in models.items()}
        times = interleaved_times(runs, warmup, repeats, precision)
        row = {}
        for name, values in times.items():
            row[name] = {f"{clock}_seconds": statistics.median(v[i] for v in values) for i, clock in enumerate(CLOCKS)}
            row[name]["times"] = values
        for index, clock in enumerate(CLOCKS):
            row[f"srn_over_timm_{clock}"] = row["srn"][f"{clock}_seconds"] / row["timm"][f"{clock}_seconds"]
            rounds = zip(times["srn"], times["timm"])
            row[f"srn_over_timm_{clock}_by_round"] = [srn[index] / timm[index] for srn, timm in rounds]
        results[precision] = row
    for clock in CLOCKS:
        gains = {
            name: results["float32"][name][f"{clock}_seconds"] / results["bf16_channels_last"][name][f"{clock}_seconds"]
            for name in MODELS
        }
        results[f"fast_path_gain_{clock}"] = {**gains, "srn_over_timm": gains["srn"] / gains["timm"]}
    return results


def profile_branch(srn: torch.nn.Module, pixel_values: torch.Tensor, repeats: int) -> dict:
    """Every aten operation of SRN's heads on the fast path (`srn` already channels-last): dtypes, layouts, CPU time.

    The heads run on the backbone's maps X and F computed once; each of `repeats` forwards is logged, an operation's
    time is its median over them. The heads' share of SRN's forward is the median of the heads' CPU time over the
    median of a whole forward's, timed alternately.
    """
    base = srn.srn
    with torch.inference_mode(), autocast_context():
        features, classifier_features = base.forward_backbone(pixel_values)
        base.forward_branches(features, classifier_features)  # warm-up
        log = OperationLog()
        for _ in range(repeats):
            with log.forward():
                base.forward_branches(features, classifier_features)
        heads = wall_and_cpu_run(lambda: base.forward_branches(features, classifier_features))
        whole = wall_and_cpu_run(lambda: srn(pixel_values))
        times = interleaved_times({"heads": heads, "whole": whole}, 0, repeats, "heads / whole")
    heads_cpu = statistics.median(cpu for _, cpu in times["heads"])
    whole_cpu = statistics.median(cpu for _, cpu in times["whole"])
    return {"operations": log.table(), "heads_cpu_seconds": heads_cpu, "heads_share_of_forward": heads_cpu / whole_cpu}


PRECISION_LABELS = {"float32": "float32", "bf16_channels_last": "bf16 + channels-last"}


def ratio_rows(results: dict) -> list[str]:
    lines = [
        "| precision | timm, wall ms | SRN, wall ms | SRN / timm, wall | timm, CPU ms | SRN, CPU ms | SRN / timm, CPU "
        "| SRN / timm by round, wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for precision in PRECISIONS:
        row = results["ratios"][precision]
        by_round = ", ".join(f"{ratio:.2f}" for ratio in row["srn_over_timm_wall_by_round"])
        lines.append(
            f"| {PRECISION_LABELS[precision]} | {1000 * row['timm']['wall_seconds']:.0f} "
            f"| {1000 * row['srn']['wall_seconds']:.0f} | **{row['srn_over_timm_wall']:.3f}** "
            f"| {1000 * row['timm']['cpu_seconds']:.0f} | {1000 * row['srn']['cpu_seconds']:.0f} "
            f"| **{row['srn_over_timm_cpu']:.3f}** | {by_round} |"
        )
    return lines


def operation_rows(profile: dict, least_share: float = 0.005) -> list[str]:
    lines = [
        "| operation | inputs (dtype, layout, shape) | output | calls | CPU ms | share |",
        "|---|---|---|---|---|---|",
    ]
    rest = [row for row in profile["operations"] if row["share"] < least_share]
    for row in profile["operations"]:
        if row["share"] >= least_share:
            lines.append(
                f"| `{row['operation'].removeprefix('aten.')}` | {row['inputs']} | {row['output']} "
                f"| {row['calls_per_forward']:g} | {row['cpu_ms']:.2f} | {100 * row['share']:.1f} % |"
            )
    lines.append(
        f"| {len(rest)} others | | | | {sum(row['cpu_ms'] for row in rest):.2f} "
        f"| {100 * sum(row['share'] for row in rest):.1f} % |"
    )
    return lines


def branch_findings(profile: dict) -> list[str]:
    """The heads' operations (views aside) with a float32 output, a 4-d output not channels-last, a strided input."""
    computed = [row for row in profile["operations"] if not row["view"]]

    def listed(rows) -> str:
        return "; ".join(sorted({f"`{row['operation'].removeprefix('aten.')}` ({row['inputs']})" for row in rows}))

    float32 = [row for row in computed if row["output"].startswith("float32")]
    not_channels_last = [
        row for row in computed if row["output"].count("x") == 3 and row["output"].split()[1] != "channels-last"
    ]
    not_channels_last = [row for row in not_channels_last if row["output"].split()[1] != "both"]
    strided = [row for row in computed if " strided " in f" {row['inputs']} "]
    return [
        f"- float32 outputs: {listed(float32) or 'none'}",
        f"- 4-d outputs not channels-last: {listed(not_channels_last) or 'none'}",
        f"- strided inputs (copied by the operation): {listed(strided) or 'none'}",
    ]


def write_report(results: dict, path: Path) -> None:
    setting, machine = results["setting"], results["machine"]
    gains = {clock: results["ratios"][f"fast_path_gain_{clock}"] for clock in CLOCKS}
    profile = results["branch_profile"]
    lines = [
        "# The fast path and SRN's branch",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['torch_threads']} torch threads), "
        f"AVX-512 bf16: {machine['avx512_bf16']}, AMX: {machine['amx']}; torch {machine['torch']}, timm "
        f"{machine['timm']}. Load average at start {machine['load_average'][0]:.2f}, at end "
        f"{results['load_average_at_end'][0]:.2f}.",
        "",
        f"SRN on {setting['backbone']} against the plain timm classifier, {setting['image_size']} px, batch "
        f"{setting['batch_size']}, {setting['num_labels']} labels: medians of {setting['repeats']} interleaved rounds "
        f"after {setting['warmup']} warm-up. FLOPs SRN / timm: {results['flops_srn_over_timm']:.3f}.",
        "",
        *ratio_rows(results),
        "",
        "Fast-path gain (float32 / bf16 + channels-last): "
        + "; ".join(
            f"{clock} clock: timm {gains[clock]['timm']:.2f}x, SRN {gains[clock]['srn']:.2f}x, SRN's / timm's "
            f"{gains[clock]['srn_over_timm']:.3f}"
            for clock in CLOCKS
        )
        + ".",
        "",
        "## SRN's heads on the fast path, by operation",
        "",
        "The heads (f_cls, f_att, S, A, U, f_sr, fusion) on the backbone's maps: "
        f"{1000 * profile['heads_cpu_seconds']:.1f} ms of CPU time per forward, "
        f"{100 * profile['heads_share_of_forward']:.1f} % of SRN's forward: SRN costs "
        f"{1 / (1 - profile['heads_share_of_forward']):.3f} x its backbone (the plain classifier less its pooling and "
        "linear layer), a figure that other processes on the machine disturb less than the ratios above. Medians of "
        f"{setting['repeats']} forwards; `to` rows are autocast's casts of the float32 weights.",
        "",
        *operation_rows(profile),
        "",
        *branch_findings(profile),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--num-labels", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 9; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores by default)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="bf16_branch", help="the results files' name, without extension")
    parser.add_argument("--report-from", type=Path, help="rewrite the .md next to this results JSON, measure nothing")
    args = parser.parse_args(argv)
    check_threads(parser, args.threads)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 9
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report_from is not None:
        results = json.loads(args.report_from.read_text(encoding="utf-8"))
        write_report(results, args.report_from.with_suffix(".md"))
        return results
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = machine_description()
    models = {name: build_model(name, args.backbone, args.num_labels, args.image_size) for name in MODELS}
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    flops = {name: count_flops(model, pixel_values) for name, model in models.items()}
    ratios = measure_ratios(models, pixel_values, args.warmup, args.repeats)
    profile = profile_branch(models["srn"], pixel_values, args.repeats)
    results = {
        "setting": {key: getattr(args, key) for key in ("backbone", "num_labels", "image_size", "batch_size")}
        | {"repeats": args.repeats, "warmup": args.warmup},
        "machine": machine,
        "flops_srn_over_timm": flops["srn"] / flops["timm"],
        "ratios": ratios,
        "branch_profile": profile,
        "load_average_at_end": os.getloadavg(),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_report(results, args.output_dir / f"{args.name}.md")
    print((args.output_dir / f"{args.name}.md").read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    main()
