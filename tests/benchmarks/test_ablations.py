"""benchmarks/ablations.py: the capacity-matched control head, fused scores, and a whole (tiny) ablation over two
seeds."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_srn

REPO = Path(__file__).resolve().parents[2]


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablations = load("ablations", REPO / "benchmarks" / "ablations.py")


def test_control_head_has_srn_layers_and_no_label_attention():
    model = small_srn({0: "a", 1: "b", 2: "c"}, layout="released", attention_feature_index=-1)
    pixel_values = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        srn_outputs = model.srn(pixel_values)
        control = ablations.control_forward_heads(model.srn, *model.srn.forward_backbone(pixel_values))
    torch.testing.assert_close(control.cls_logits, srn_outputs.cls_logits)  # y_cls is shared
    assert control.attention_maps.shape == srn_outputs.attention_maps.shape  # softmax(Z + S): for the pointing game
    assert not torch.allclose(control.att_logits, srn_outputs.att_logits)
    alpha = model.config.alpha
    torch.testing.assert_close(control.logits, alpha * control.cls_logits + (1 - alpha) * control.sr_logits)
    # Same module, same parameters: every parameter of the SRN branch gets a gradient from the control's losses.
    model.train()
    features = model.srn.forward_backbone(pixel_values)
    control = ablations.control_forward_heads(model.srn, *features)
    (control.logits.sum() + control.att_logits.sum()).backward()
    for name in ("attention_trunk", "attention", "confidence", "spatial_regularization"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model.srn, name).parameters()), name


def test_fused_scores_are_the_sigmoid_of_fused_logits(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    logits = {stage: rng.normal(0, 4, (40, 3)) for stage in (1, 2, 3, 4)}
    folder = tmp_path / "srn" / "predictions"
    folder.mkdir(parents=True)
    for stage, values in logits.items():
        save_file(
            {"scores": torch.sigmoid(torch.tensor(values, dtype=torch.float32)), "labels": torch.tensor(labels)},
            folder / f"stage-{stage}-test.safetensors",
        )
    scores, loaded_labels = ablations.variant_scores(tmp_path, alpha=0.25)
    assert set(scores) == {
        "stage 1",
        "y_att alone",
        "y_cls + y_att fused",
        "y_cls + y_sr fused",
        "SRN",
    }  # no other runs
    np.testing.assert_array_equal(loaded_labels, labels)
    expected = 1 / (1 + np.exp(-(0.25 * logits[1] + 0.75 * logits[3])))
    np.testing.assert_allclose(scores["y_cls + y_sr fused"], expected, rtol=1e-4)  # float32 scores


@pytest.mark.slow
def test_tiny_ablation_over_two_seeds(tmp_path):
    from helpers import make_image_folder, tiny_args

    data_dir = make_image_folder(tmp_path / "squares")
    overrides = tiny_args(data_dir, tmp_path / "unused")
    overrides = [value for value in overrides[1::2] if not value.startswith("output_dir=")]
    argv = [
        "--seeds",
        "0",
        "1",
        "--output-dir",
        str(tmp_path / "runs"),
        "--results-dir",
        str(tmp_path / "results"),
        "--no-staging-epochs",
        "1",
    ] + [arg for value in overrides for arg in ("--set", value)]
    results = ablations.main(argv)
    assert set(results["variants"]) == {name for name, _, _ in ablations.VARIANTS}
    assert all(figures["seeds"] == 2 for figures in results["variants"].values())
    # Every control starts from its seed's stage-1 model: stage 1's test scores are the control run's y_cls input.
    for seed in (0, 1):
        srn_report = json.loads((tmp_path / "runs" / f"seed-{seed}" / "srn" / "metrics.json").read_text())
        assert results["seeds"][seed]["SRN"]["mAP"] == pytest.approx(srn_report["stages"][-1]["test"]["mAP"], abs=1e-6)
        control_log = (tmp_path / "runs" / f"seed-{seed}" / "control" / "train.log").read_text()
        assert "stages [2, 3, 4]" in control_log
    assert results["best_control"] in ablations.CONTROLS
    assert [step["kind"] for step in results["gain_steps"]] == ["chain"] * 4 + ["beside"] * 2
    first = results["differences"]["stage 1"]["SRN"][0]
    assert first["seed"] == 0 and first["low"] <= first["difference"] <= first["high"]
    assert "| SRN | 2 |" in (tmp_path / "results" / "ablations.md").read_text()
    assert (tmp_path / "results" / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    # A second call keeps the finished runs and gives the same figures.
    again = ablations.main(argv)
    assert again["seeds"][0]["SRN"] == results["seeds"][0]["SRN"]


def test_gain_steps_add_up_to_srn_minus_stage_1():
    """The chain of paired differences decomposes SRN's gain: its steps sum to SRN minus stage 1 in every seed."""
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 4)) < 0.4).astype(np.float32)
    per_seed = {}
    for seed in (0, 1):
        scores = {
            name: np.clip(labels * rng.uniform(0.2, 0.6) + rng.random(labels.shape) * 0.6, 0, 1)
            for name, _, _ in ablations.VARIANTS
        }
        per_seed[seed] = (scores, labels)
    steps = ablations.gain_steps(per_seed)
    chain = [step for step in steps if step["kind"] == "chain"]
    assert [step["variant"] for step in chain][-1] == "SRN" and chain[0]["minus"] == "stage 1"
    assert [step["minus"] for step in chain[1:]] == [step["variant"] for step in chain[:-1]]  # consecutive
    whole = ablations.differences(per_seed, [name for name, _, _ in ablations.VARIANTS], None)["stage 1"]["SRN"]
    for index, seed in enumerate((0, 1)):
        total = sum(step["runs"][index]["difference"] for step in chain)
        assert total == pytest.approx(whole[index]["difference"], abs=1e-9) and whole[index]["seed"] == seed
    assert {step["minus"] for step in steps if step["kind"] == "beside"} == {"control (fused)", "SRN without staging"}
    table = "\n".join(ablations.gain_steps_markdown(steps))
    assert "| joint fine-tuning with the backbone (stage 4) | SRN minus y_cls + y_sr fused |" in table
