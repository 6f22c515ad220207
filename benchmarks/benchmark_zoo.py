"""What the zoo features cost and save, each as a ratio against a baseline run in the same process.

    python benchmarks/benchmark_zoo.py                  # the full run (about 15 minutes on 2 cores)
    python benchmarks/benchmark_zoo.py --quick          # a smoke run on a tiny backbone (about 2 minutes)

1. Gradient checkpointing: peak tensor memory and time of one stage-4 training step (forward, joint loss L(y) +
   L(y_att), backward, SGD step) of SRN-ResNet-101 at 448 x 448 (80 labels), with and without
   `model.gradient_checkpointing_enable()` (timm's block-wise checkpointing of the backbone, two segments in the
   SRN branch). Runs interleaved; memory by the live-tensor counter of `probes.py`.
2. `torch.compile(model, fullgraph=True)` (the default inductor backend) against eager inference: largest absolute
   difference of the logits and of the attention maps, compile time, and the speed-up.
3. `import srn_hf` in fresh interpreters that have already imported torch, timm and transformers: the seconds it
   adds (median), against the seconds of those imports, and the SRN configs built meanwhile; with
   `--import-baseline FOLDER` (another srn_hf, e.g. `git archive <commit> srn_hf | tar -x -C FOLDER`), both packages
   in turn, and the ratio.

Writes `zoo_results.json`, `zoo_results.md` and `zoo_results.png` to `--output-dir` (default benchmarks/results);
`--only SECTION ...` re-measures those sections and keeps the others of an existing `zoo_results.json`. Each
section records the machine (with its load average) and the command that measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from benchmark_utils import label_set, machine_description
from probes import interleaved_times, peak_memory, timed_run
from tqdm.auto import tqdm

import srn_hf
from srn_hf import SRNConfig, SRNForImageClassification
from srn_hf.stages import StageForward, apply_stage, stage_loss

RESULTS = Path(__file__).resolve().parent / "results"

IMPORT_SCRIPT = """
import time
started = time.perf_counter()
import torch, timm, transformers, transformers.pipelines
dependencies = time.perf_counter() - started
built = []
post_init = transformers.PreTrainedConfig.__post_init__
transformers.PreTrainedConfig.__post_init__ = (
    lambda self, **kwargs: built.append(type(self).__name__) or post_init(self, **kwargs)
)
started = time.perf_counter()
import srn_hf
print(dependencies, time.perf_counter() - started, len(built))
"""


def build_srn(backbone: str, image_size: int, num_labels: int) -> SRNForImageClassification:
    torch.manual_seed(0)
    return SRNForImageClassification(
        SRNConfig(backbone=backbone, id2label=label_set(num_labels), image_size=image_size)
    )


def stage4_step(model, pixel_values, labels, optimizer):
    """One training step of stage 4, as `examples/train_stages.py` runs it; returns its seconds."""
    forward = StageForward(model, 4)

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        stage_loss(forward(pixel_values), labels, 4).backward()
        optimizer.step()
        return time.perf_counter() - started

    return step


def benchmark_checkpointing(args) -> dict:
    """Peak memory and seconds of a stage-4 step with and without gradient checkpointing (two models, same weights)."""
    models = {"plain": build_srn(args.backbone, args.image_size, args.num_labels)}
    models["checkpointed"] = build_srn(args.backbone, args.image_size, args.num_labels)
    models["checkpointed"].gradient_checkpointing_enable()
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = (torch.rand(args.batch_size, args.num_labels) < 0.05).float()
    steps, memory = {}, {}
    for name, model in models.items():
        apply_stage(model, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        steps[name] = stage4_step(model, pixel_values, labels, optimizer)
        steps[name]()  # the optimizer's momentum buffers exist from here on, for both
        memory[name] = peak_memory(steps[name], model, optimizer)
    times = interleaved_times(steps, args.warmup, args.repeats, desc="stage-4 steps")
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_labels": args.num_labels,
        "peak_memory_mib": {name: m["peak_memory_mib"] for name, m in memory.items()},
        "peak_allocated_mib": {name: m["peak_allocated_mib"] for name, m in memory.items()},
        "seconds": seconds,
        "times": times,
        "memory_ratio": memory["checkpointed"]["peak_memory_mib"] / memory["plain"]["peak_memory_mib"],
        "activation_memory_ratio": memory["checkpointed"]["peak_allocated_mib"] / memory["plain"]["peak_allocated_mib"],
        "time_ratio": seconds["checkpointed"] / seconds["plain"],
    }


def benchmark_compile(args) -> dict:
    """Eager against `torch.compile(fullgraph=True)` inference: numerics, compile seconds and speed-up."""
    model = build_srn(args.compile_backbone, args.compile_image_size, args.num_labels).eval()
    pixel_values = torch.randn(args.compile_batch_size, 3, args.compile_image_size, args.compile_image_size)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        started = time.perf_counter()
        fast = compiled(pixel_values)
        compile_seconds = time.perf_counter() - started
        eager = model(pixel_values)

    def timed(run):
        def forward() -> None:
            with torch.inference_mode():
                run(pixel_values)

        return timed_run(forward)

    times = interleaved_times(
        {"eager": timed(model), "compiled": timed(compiled)}, args.warmup, args.repeats, "compile"
    )
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "backbone": args.compile_backbone,
        "image_size": args.compile_image_size,
        "batch_size": args.compile_batch_size,
        "max_abs_diff_logits": (fast.logits - eager.logits).abs().max().item(),
        "max_abs_diff_attention_maps": (fast.attention_maps - eager.attention_maps).abs().max().item(),
        "max_abs_logit": eager.logits.abs().max().item(),
        "compile_seconds": compile_seconds,
        "seconds": seconds,
        "times": times,
        "speedup": seconds["eager"] / seconds["compiled"],
    }


def import_run(package_root: Path) -> tuple[float, float, int]:
    """One fresh interpreter importing the srn_hf of `package_root`: (dependencies' seconds, srn_hf's, configs)."""
    environment = {**os.environ, "PYTHONPATH": str(package_root)}
    output = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=package_root,
        env=environment,
    )
    dependencies, srn_hf_seconds, configs_built = output.stdout.split()
    return float(dependencies), float(srn_hf_seconds), int(configs_built)


def benchmark_import(args) -> dict:
    """`import srn_hf` in fresh interpreters, after torch, timm and transformers (with its pipelines); with
    `--import-baseline` (a folder holding another srn_hf, e.g. `git archive` of an earlier commit), both in turn."""
    roots = {"current": Path(srn_hf.__file__).resolve().parents[1]}
    if args.import_baseline is not None:
        roots["baseline"] = args.import_baseline.resolve()
    runs = {name: [] for name in roots}
    for _ in tqdm(range(args.import_repeats), desc="import srn_hf", leave=False):
        for name, root in roots.items():
            runs[name].append(import_run(root))
    results = {}
    for name, measured in runs.items():
        seconds = statistics.median(run[1] for run in measured)
        dependencies = statistics.median(run[0] for run in measured)
        results[name] = {
            "srn_hf_seconds": seconds,
            "dependencies_seconds": dependencies,
            "configs_built": measured[0][2],
            "ratio_to_dependencies": seconds / dependencies,
            "runs": measured,
        }
    results.update(results.pop("current"))
    if "baseline" in results:
        results["ratio_to_baseline"] = results["srn_hf_seconds"] / results["baseline"]["srn_hf_seconds"]
    return results


def write_results(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "zoo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| measurement | baseline | with the feature | ratio |", "|---|---|---|---|"]
    if "checkpointing" in results:
        c = results["checkpointing"]
        setting = f"{c['backbone']} at {c['image_size']}, batch {c['batch_size']}"
        lines.append(
            f"| stage-4 step peak memory, {setting} (MiB) | {c['peak_memory_mib']['plain']:.0f} | "
            f"{c['peak_memory_mib']['checkpointed']:.0f} (checkpointed) | {c['memory_ratio']:.2f} |"
        )
        lines.append(
            f"| stage-4 step activation memory (MiB) | {c['peak_allocated_mib']['plain']:.0f} | "
            f"{c['peak_allocated_mib']['checkpointed']:.0f} | {c['activation_memory_ratio']:.2f} |"
        )
        lines.append(
            f"| stage-4 step time (s) | {c['seconds']['plain']:.2f} | {c['seconds']['checkpointed']:.2f} | "
            f"{c['time_ratio']:.2f} |"
        )
    if "compile" in results:
        c = results["compile"]
        lines.append(
            f"| inference, {c['backbone']} at {c['image_size']}, batch {c['batch_size']} (s) | "
            f"{c['seconds']['eager']:.3f} (eager) | {c['seconds']['compiled']:.3f} (compiled) | "
            f"{c['speedup']:.2f}x speed-up |"
        )
        lines.append(
            f"| compiled - eager, max abs diff | logits {c['max_abs_diff_logits']:.2e} | attention maps "
            f"{c['max_abs_diff_attention_maps']:.2e} | compile {c['compile_seconds']:.0f} s |"
        )
    if "import" in results:
        i = results["import"]
        lines.append(
            f"| `import srn_hf` after its dependencies (s) | {i['dependencies_seconds']:.2f} (torch, timm, "
            f"transformers) | {i['srn_hf_seconds']:.3f} ({i['configs_built']} configs built) | "
            f"{i['ratio_to_dependencies']:.3f} |"
        )
        if "baseline" in i:
            b = i["baseline"]
            lines.append(
                f"| `import srn_hf`, baseline package (s) | {b['srn_hf_seconds']:.3f} ({b['configs_built']} "
                f"configs built) | {i['srn_hf_seconds']:.3f} (this one) | {i['ratio_to_baseline']:.2f} |"
            )
    (output_dir / "zoo_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, output_dir / "zoo_results.png")


def plot(results: dict, path: Path) -> None:
    """Bars: peak memory and step time with and without checkpointing; eager and compiled inference time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "checkpointing" in results:
        c = results["checkpointing"]
        panels.append(("stage-4 step peak memory (MiB)", c["peak_memory_mib"]))
        panels.append(("stage-4 step time (s)", c["seconds"]))
    if "compile" in results:
        panels.append(("inference time (s)", results["compile"]["seconds"]))
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (title, values) in zip(axes[0], panels):
        axis.bar(list(values), list(values.values()), color=["tab:gray", "tab:blue"])
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny backbone and sizes: a smoke run")
    parser.add_argument("--only", nargs="+", choices=("checkpointing", "compile", "import"), default=None)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-labels", type=int, default=80)
    parser.add_argument("--compile-backbone", default="resnet50")
    parser.add_argument("--compile-image-size", type=int, default=224)
    parser.add_argument("--compile-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--import-repeats", type=int, default=5)
    parser.add_argument("--import-baseline", type=Path, default=None, help="a folder holding another srn_hf")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone = args.compile_backbone = "resnet10t"
        args.image_size, args.compile_image_size, args.batch_size, args.compile_batch_size = 128, 64, 2, 2
        args.repeats, args.import_repeats = 2, 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    sections = {"checkpointing": benchmark_checkpointing, "compile": benchmark_compile, "import": benchmark_import}
    results = {}
    previous = args.output_dir / "zoo_results.json"
    if args.only and previous.exists():  # re-measure some sections, keep the others
        results = json.loads(previous.read_text())
    for name in args.only or sections:
        results[name] = sections[name](args)
        results[name]["machine"] = {**machine_description(), "load_average_end": os.getloadavg()}
        results[name]["command"] = " ".join(sys.argv)
    write_results(results, args.output_dir)


if __name__ == "__main__":
    main()
