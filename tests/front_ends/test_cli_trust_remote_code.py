"""No `srn-hf` command and no demo page runs the Python code a model folder brings (its config.json's `auto_map`, for
a `model_type` transformers does not know) unless `--trust-remote-code` says so: transformers would ask "Do you wish
to run the custom code? [y/N]" on the terminal, and a `y` (piped, or typed by a user who did not read) runs it.

The folder here is a real SRN folder whose config.json was rewritten to point at a module of its own that writes a
marker file when it is imported: the marker must never appear, and nothing may be asked.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPOSITORY, install_in_hub_cache, make_image_folder, save_with_processor, small_srn
from PIL import Image

import srn_hf.app
from srn_hf.cli import main as cli_main

MODULE = """
from pathlib import Path
Path({marker!r}).write_text("the folder's own code ran")
from transformers import PreTrainedConfig
class SneakyConfig(PreTrainedConfig):
    model_type = "sneaky_net"
"""


@pytest.fixture
def sneaky_folder(tmp_path) -> tuple[Path, Path]:
    """(a model folder whose config.json would run its configuration_sneaky.py, the marker that code writes)."""
    folder = Path(save_with_processor(small_srn({0: "red", 1: "green", 2: "blue"}, image_size=64), tmp_path / "model"))
    marker = tmp_path / "marker.txt"
    (folder / "configuration_sneaky.py").write_text(MODULE.format(marker=str(marker)), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "sneaky_net"
    config["auto_map"] = dict.fromkeys(config["auto_map"], "configuration_sneaky.SneakyConfig")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder, marker


def run_srn_hf(*arguments: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`srn-hf ARGUMENTS` in a fresh process with `y` piped into it, as a script that answers every question would."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    command = [sys.executable, "-m", "srn_hf.cli", *arguments]
    return subprocess.run(command, input="y\n", capture_output=True, text=True, env=env, timeout=300)


def test_predict_never_runs_the_folders_code_without_the_flag(sneaky_folder, tmp_path):
    folder, marker = sneaky_folder
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    refused = run_srn_hf("predict", str(folder), str(image), tmp_path=tmp_path)
    assert refused.returncode == 2 and not marker.exists()
    assert "[y/N]" not in refused.stdout + refused.stderr  # nothing asked
    assert [line for line in refused.stderr.splitlines() if "error" in line] == [
        f"srn-hf predict: error: {folder} asks to run the Python code it brings (configuration_sneaky.py of its "
        "auto_map, for model_type 'sneaky_net'): refused, it runs only with --trust-remote-code"
    ]
    # The flag is what lets it run (and a folder of another model is then refused by the SRN pipeline, not here).
    run_srn_hf("predict", str(folder), str(image), "--trust-remote-code", tmp_path=tmp_path)
    assert marker.exists()


def test_calibrate_export_publish_demo_and_the_page_never_run_it(sneaky_folder, tmp_path, monkeypatch, capsys):
    """The commands that load SRN models only have no flag: SRN's code is srn_hf's own, never a folder's."""
    folder, marker = sneaky_folder
    data = make_image_folder(tmp_path / "data", sizes=(2, 2, 2))
    commands = {
        "calibrate": ["calibrate", str(folder), "--data", "imagefolder", "--data-option", f"data_dir={data}"],
        "export": ["export", str(folder), str(tmp_path / "exported")],
        "publish": ["publish", str(folder), "--repo-id", "org/model", "--dry-run", str(tmp_path / "hub")],
        "demo": ["demo", str(folder), "--port", "0"],
    }
    for command, arguments in commands.items():
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # answers yes to anything asked
        assert cli_main(arguments) == 2, command
        captured = capsys.readouterr()
        flag = command == "demo"  # demo and predict load any model: the flag lets its code run; the others: nothing
        allowed = "it runs only with --trust-remote-code" if flag else "SRN models need no code of their own"
        errors = [line for line in captured.err.splitlines() if "error" in line]  # not the loading bars
        assert errors == [
            f"srn-hf {command}: error: {folder} asks to run the Python code it brings (configuration_sneaky.py of "
            f"its auto_map, for model_type 'sneaky_net'): refused, {allowed}"
        ], command
        assert "[y/N]" not in captured.out + captured.err and not marker.exists(), command
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    with pytest.raises(ValueError, match="trust_remote_code"):
        srn_hf.app.build_app(folder)  # the page of the folder, built from Python
    assert not marker.exists()


def test_a_hub_repository_bringing_its_own_code_is_refused_by_id(sneaky_folder, tmp_path, monkeypatch, capsys):
    """The same folder as a Hub repository (an offline Hub cache): `srn-hf predict org/sneaky` refuses it by its id."""
    from huggingface_hub import constants

    folder, marker = sneaky_folder
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # read at each download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    install_in_hub_cache(folder, "org/sneaky", tmp_path / "hub-cache")
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    assert cli_main(["predict", "org/sneaky", str(image)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert errors == [
        "srn-hf predict: error: org/sneaky asks to run the Python code it brings (its auto_map): refused, it runs "
        "only with --trust-remote-code"
    ]
    assert "[y/N]" not in captured.out + captured.err and not marker.exists()
