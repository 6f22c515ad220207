"""Record names (`srn_hf.bulk.record_text`): one name per file, also for two files whose names would escape alike."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import save_with_processor, small_srn
from PIL import Image

from srn_hf.bulk import record_text
from srn_hf.cli import main


@pytest.fixture
def two_cafes(tmp_path):
    """A folder with `caf\\xe9.png` as bytes (Latin-1, invalid UTF-8) and a file literally named `caf\\\\xe9.png`."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [os.path.join(os.fsencode(photos), b"caf\xe9.png"), os.fsencode(photos / "caf\\xe9.png")]
    for seed, name in enumerate(names):
        pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.fsdecode(name), format="PNG")
    return photos


def test_two_files_whose_names_escape_alike_get_two_record_names(two_cafes, tmp_path, capsys):
    files = sorted(
        os.fsdecode(os.path.join(os.fsencode(two_cafes), name)) for name in os.listdir(os.fsencode(two_cafes))
    )
    assert len(files) == 2 and len({record_text(file) for file in files}) == 2
    assert {record_text(file)[len(str(two_cafes)) + 1 :] for file in files} == {"caf\\xe9.png", "caf\\\\xe9.png"}
    assert record_text(str(two_cafes / "plain é.png")) == str(two_cafes / "plain é.png")  # other names: themselves

    model = save_with_processor(small_srn({0: "cat", 1: "dog"}, image_size=32), tmp_path / "model")
    output = tmp_path / "tags.jsonl"
    argv = ["predict", model, str(two_cafes), "--output", str(output), "--num-workers", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    images = [json.loads(line)["image"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(images) == 2 and len(set(images)) == 2
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "2 images already in" in capsys.readouterr().err  # each recognised as itself, none predicted again
    assert len(Path(output).read_text(encoding="utf-8").splitlines()) == 2
