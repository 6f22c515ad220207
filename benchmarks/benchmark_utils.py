"""What the benchmark scripts share: the three models compared, parameter and FLOP counts, the machine.

The three models, all random-init (speed and memory do not depend on the weights), with the same backbone:
    "srn"          srn_hf.SRNForImageClassification (backbone + f_cls + f_att + confidence maps + f_sr)
    "timm"         the plain timm classifier, `timm.create_model(backbone, num_classes=C)`
    "timm_wrapper" transformers' `TimmWrapperForImageClassification` on the same timm architecture
"""

from __future__ import annotations

import datetime
import os
import platform

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

import srn_hf
from srn_hf import SRNConfig, SRNForImageClassification

MODEL_NAMES = ("srn", "timm", "timm_wrapper")


def label_set(num_labels: int) -> dict[int, str]:
    """`id2label` of `num_labels` placeholder labels (80 for MS-COCO)."""
    return {index: f"label_{index}" for index in range(num_labels)}


def build_model(name: str, backbone: str = "resnet101", num_labels: int = 80, image_size: int = 224) -> nn.Module:
    """One of `MODEL_NAMES`, random-init, on `backbone` with `num_labels` outputs, in eval mode."""
    if name == "srn":
        config = SRNConfig(backbone=backbone, id2label=label_set(num_labels), image_size=image_size)
        model = SRNForImageClassification(config)
    elif name == "timm":
        model = timm.create_model(backbone, num_classes=num_labels)
    elif name == "timm_wrapper":
        config = TimmWrapperConfig(
            architecture=backbone, num_labels=num_labels, problem_type="multi_label_classification"
        )
        model = TimmWrapperForImageClassification(config)
    else:
        raise ValueError(f"model {name!r} is not one of {MODEL_NAMES}")
    return model.eval()


def logits_of(outputs) -> torch.Tensor:
    """The logits of any of the three models' outputs (a tensor, or an output with `logits`)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (weights and biases; batch-norm running statistics are buffers, not counted)."""
    return sum(parameter.numel() for parameter in module.parameters())


def count_flops(forward, pixel_values: torch.Tensor) -> int:
    """FLOPs of `forward(pixel_values)` counted by `torch.utils.flop_counter.FlopCounterMode`.

    A FLOP here is one multiply or one add: a multiply-add counts 2 (so GFLOPs = 2 x GMACs). Counted are the
    convolutions and matrix products, which make up nearly all of the work; element-wise operations (batch norm,
    ReLU, softmax, pooling) are not.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(pixel_values)
    return counter.get_total_flops()


def machine_description() -> dict:
    """The CPU, its instruction sets, the threads used and the library versions, for the results file."""
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu_name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu_name,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": __import__("transformers").__version__,
        "srn_hf": srn_hf.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def plot_seed_scores(axis, scores: dict[str, list[float]], highlight: str = "SRN") -> None:
    """Each variant's test mAP: the mean over its seeds as a bar (`highlight` in orange), each seed as a dot."""
    for position, (name, values) in enumerate(scores.items()):
        axis.bar(
            position, sum(values) / len(values), color="tab:orange" if name == highlight else "tab:blue", alpha=0.6
        )
        axis.scatter([position] * len(values), values, color="k", s=14, zorder=3)
    low = min(min(values) for values in scores.values())
    axis.set(ylim=(low - 3, None), ylabel="test mAP (%)", title="test mAP per variant (bar: mean; dots: seeds)")
    axis.set_xticks(range(len(scores)), list(scores), rotation=30, ha="right")


def plot_intervals(axis, rows: dict[str, list[dict]], ylabel: str, title: str) -> None:
    """Per row name, each seed's difference (`{"seed", "difference", "low", "high"}`) with its interval, side by
    side, coloured by seed; a line at 0."""
    for position, runs in enumerate(rows.values()):
        for offset, run in enumerate(runs):
            axis.errorbar(
                position + 0.12 * (offset - (len(runs) - 1) / 2),
                run["difference"],
                yerr=[[run["difference"] - run["low"]], [run["high"] - run["difference"]]],
                fmt="o",
                color=f"C{run['seed'] % 10}",
                capsize=3,
            )
    seeds = sorted({run["seed"] for runs in rows.values() for run in runs})
    for seed in seeds:  # one legend entry per seed
        axis.errorbar([], [], yerr=[], fmt="o", color=f"C{seed % 10}", label=f"seed {seed}")
    axis.axhline(0, color="grey", linewidth=1)
    axis.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right")
    axis.set(ylabel=ylabel, title=title)
    axis.legend(fontsize=8)
