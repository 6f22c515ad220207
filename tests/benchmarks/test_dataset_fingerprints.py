"""benchmarks/dataset_fingerprints.py: the comparison datasets' records, written and checked on small generations; the
committed records cover every variant at its sizes for the current generator."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from srn_hf.data.stamp_scenes import GENERATOR_VERSION, TUXPAINT_DIR, VARIANTS

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dataset_fingerprints", REPO / "benchmarks" / "dataset_fingerprints.py")
fingerprints = importlib.util.module_from_spec(spec)
sys.modules["dataset_fingerprints"] = fingerprints
spec.loader.exec_module(fingerprints)


def test_committed_records_cover_every_variant_for_this_generator():
    records = json.loads((REPO / "benchmarks" / "datasets.json").read_text())
    assert sorted(records) == sorted(VARIANTS)
    for name, record in records.items():
        assert record["generator_version"] == GENERATOR_VERSION, f"{name}: generate and record it again (--write)"
        assert record["sizes"] == list(VARIANTS[name].sizes) and record["image_size"] == VARIANTS[name].image_size
        assert record["labels"] == sorted(VARIANTS[name].classes)
        for split, size in zip(("train", "validation", "test"), record["sizes"]):
            assert record["splits"][split]["images"] == size and min(record["splits"][split]["positives"].values()) > 0
    # Their placement differs from the demo's in every split: street-sky's boxes overlap less, tabletop's piles hide
    # more of each object.
    for split in ("train", "validation", "test"):
        demo, street, tabletop = (
            records[name]["splits"][split]["placement"] for name in ("demo", "street-sky", "tabletop")
        )
        assert street["occluded_share"] < demo["occluded_share"] - 0.05
        assert tabletop["mean_visible_fraction"] < demo["mean_visible_fraction"] - 0.02


@pytest.mark.skipif(not (TUXPAINT_DIR / "stamps").is_dir(), reason="tuxpaint-stamps-default is not installed")
def test_write_then_check_finds_a_changed_fingerprint(tmp_path, capsys):
    records = tmp_path / "datasets.json"
    small = ["--file", str(records), "--workers", "1"]
    assert fingerprints.main(["--write", "--variants", "tabletop", "--sizes", "3", "2", "2", *small]) == 0
    written = json.loads(records.read_text())["tabletop"]
    assert written["sizes"] == [3, 2, 2] and written["image_size"] == 160 and written["seed"] == 0
    assert written["generation"]["workers"] == 1 and len(written["splits"]["test"]["fingerprint"]) == 64
    assert fingerprints.main(["--check", *small]) == 0

    changed = json.loads(records.read_text())
    changed["tabletop"]["splits"]["test"]["fingerprint"] = "0" * 64
    records.write_text(json.dumps(changed))
    capsys.readouterr()
    assert fingerprints.main(["--check", *small]) == 1
    assert "mismatch: tabletop test: fingerprint" in capsys.readouterr().err

    changed["tabletop"]["generator_version"] = GENERATOR_VERSION - 1
    records.write_text(json.dumps(changed))
    assert fingerprints.main(["--check", *small]) == 1
    assert f"recorded with generator version {GENERATOR_VERSION - 1}" in capsys.readouterr().err


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    cases = [
        (["--check", "--variants", "kitchen"], "error: --variants: unknown variant 'kitchen' (known: demo, street-sky"),
        (["--check", "--file", str(tmp_path / "none.json")], "none.json: no such file (write it with --write)"),
    ]
    (tmp_path / "one.json").write_text(json.dumps({"demo": {}}))
    cases.append(
        (["--check", "--file", str(tmp_path / "one.json"), "--variants", "tabletop"], "'tabletop' has no record")
    )
    for argv, message in cases:
        assert fingerprints.main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, error
