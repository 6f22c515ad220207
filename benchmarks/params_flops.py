"""Parameters and FLOPs of SRN against the plain timm classifier on the same backbone.

    python benchmarks/params_flops.py                        # SRN-ResNet-101, 80 labels, at 224 and 448
    python benchmarks/params_flops.py --backbone convnext_tiny --num-labels 20 --sizes 224

Writes a table to stdout and `params_flops.json` to `--output-dir`. FLOPs count a multiply-add as 2 (GFLOPs =
2 x GMACs), for one image; see `benchmark_utils.count_flops` for what is counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchmark_utils import build_model, count_flops, count_parameters, machine_description

from srn_hf.stages import SRN_BRANCH, SRN_MODULES

SRN_HEAD_MODULES = SRN_MODULES[1:]  # everything after the backbone f_cnn: f_cls and the SRN branch


def params_and_flops(backbone: str, num_labels: int, image_size: int) -> dict:
    """Parameters and FLOPs per image of SRN, its backbone and head, and the plain timm classifier."""
    pixel_values = torch.randn(1, 3, image_size, image_size)
    srn = build_model("srn", backbone, num_labels, image_size)
    plain = build_model("timm", backbone, num_labels, image_size)
    srn_flops = count_flops(srn, pixel_values)
    backbone_flops = count_flops(srn.srn.forward_backbone, pixel_values)
    plain_flops = count_flops(plain, pixel_values)
    head_params = {name: count_parameters(getattr(srn.srn, name)) for name in SRN_HEAD_MODULES}
    srn_params, plain_params = count_parameters(srn), count_parameters(plain)
    srn_branch_flops = srn_flops - backbone_flops - (plain_flops - backbone_flops)  # without f_cls, as in the paper
    return {
        "backbone": backbone,
        "num_labels": num_labels,
        "image_size": image_size,
        "srn_params": srn_params,
        "srn_head_params": head_params,
        "timm_params": plain_params,
        "srn_gflops": srn_flops / 1e9,
        "backbone_gflops": backbone_flops / 1e9,
        "timm_gflops": plain_flops / 1e9,
        "srn_branch_gflops": srn_branch_flops / 1e9,
        "srn_branch_share_of_backbone": srn_branch_flops / backbone_flops,
        "srn_head_share_of_srn": (srn_flops - backbone_flops) / srn_flops,
        "srn_over_timm_flops": srn_flops / plain_flops,
        "srn_over_timm_params": srn_params / plain_params,
    }


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows of [`params_and_flops`]."""
    lines = [
        "| model | input | params (M) | GFLOPs / image (GMACs x 2) | vs plain timm |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        size = f"{row['image_size']}x{row['image_size']}"
        lines.append(
            f"| timm {row['backbone']} ({row['num_labels']} classes) | {size} | "
            f"{row['timm_params'] / 1e6:.2f} | {row['timm_gflops']:.2f} | 1.00 |"
        )
        lines.append(
            f"| SRN-{row['backbone']} ({row['num_labels']} labels) | {size} | {row['srn_params'] / 1e6:.2f} | "
            f"{row['srn_gflops']:.2f} | {row['srn_over_timm_flops']:.3f} x FLOPs, "
            f"{row['srn_over_timm_params']:.3f} x params |"
        )
        lines.append(
            f"| of which SRN branch (f_att, S, f_sr) | {size} | "
            f"{sum(row['srn_head_params'][name] for name in SRN_BRANCH) / 1e6:.2f} | "
            f"{row['srn_branch_gflops']:.2f} | {100 * row['srn_branch_share_of_backbone']:.1f} % of the "
            "backbone's FLOPs |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet101", help="timm model name (default resnet101)")
    parser.add_argument("--num-labels", type=int, default=80, help="number of labels C (default 80, MS-COCO)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="square input sizes")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = [params_and_flops(args.backbone, args.num_labels, size) for size in args.sizes]
    print(format_table(rows))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_description(), "rows": rows}
    (args.output_dir / "params_flops.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
