"""`srn-hf publish --space`: the Gradio Space folder, its card, its app loading the model by repository id, the push.

Everything is real except the network edge of the push (`HfApi.create_repo` and `HfApi.create_commit` record their
calls: conftest's `hub_calls`). The Space's app.py runs in a fresh interpreter against an offline Hub cache.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import LABELS, install_in_hub_cache, random_images, small_model
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from srn_hf import __version__
from srn_hf.cli import main as cli_main
from srn_hf.hub import hub_folder_files
from srn_hf.showcase import keep_examples

MODEL_ID, SPACE_ID = "org/srn-demo", "org/srn-demo-space"
SPACE_FILES = ["README.md", "app.py", "requirements.txt"]
REPOSITORY = Path(__file__).resolve().parents[2]
# Runs the Space's app.py as a module (the Space runs it as a script, which also launches the page) and prints the
# page's title and heading, which name the model it loaded.
RUN_SPACE_APP = """
import json, runpy, sys
demo = runpy.run_path(sys.argv[1], run_name="space_app")["demo"]
config = demo.get_config_file()
texts = [c["props"].get("value") for c in config["components"] if c["type"] == "markdown"]
examples = [c["props"] for c in config["components"] if c["type"] == "dataset"]
print(json.dumps({
    "title": config["title"],
    "heading": texts[0],
    "examples": examples[0].get("sample_labels") if examples else None,
}))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """OUTPUT_DIR/final of a training run that kept two test images with their true labels."""
    run = tmp_path_factory.mktemp("space")
    test_split = datasets.Dataset.from_dict(
        {"image": random_images(2, seed=3), "image_id": ["a", "b"], "labels": [[0, 2], []]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "labels": datasets.Sequence(datasets.ClassLabel(names=LABELS)),
            }
        ),
    )
    keep_examples(test_split, "test", LABELS, run)
    small_model().save_pretrained(run / "final")
    return run / "final"


@pytest.fixture(scope="module")
def dry_run(model_dir, tmp_path_factory) -> Path:
    """`srn-hf publish MODEL --repo-id ... --space ... --dry-run OUT`: OUT/model and OUT/space."""
    out_dir = tmp_path_factory.mktemp("dry")
    assert (
        cli_main(["publish", str(model_dir), "--repo-id", MODEL_ID, "--space", SPACE_ID, "--dry-run", str(out_dir)])
        == 0
    )
    return out_dir


def test_space_folder_holds_a_gradio_app_of_the_model(dry_run):
    space = dry_run / "space"
    assert hub_folder_files(space) == SPACE_FILES
    assert "model.safetensors" in hub_folder_files(dry_run / "model")  # the model folder as without --space

    card = SpaceCard.load(space / "README.md")  # huggingface_hub's own parsing of the front matter
    assert (card.data.sdk, card.data.app_file, card.data.models) == ("gradio", "app.py", [MODEL_ID])
    assert card.data.license == "apache-2.0"  # the model card's default
    assert card.data.sdk_version == __import__("gradio").__version__  # the Gradio the app was tested with
    assert f"srn-hf demo {MODEL_ID}" in card.text
    requirement = Requirement((space / "requirements.txt").read_text().strip())
    assert (
        requirement.name == "srn_hf"
        and requirement.extras == {"app"}
        and str(requirement.specifier) == f"=={__version__}"
    )
    compile((space / "app.py").read_text(), "app.py", "exec")


def test_space_app_loads_the_model_by_repository_id(dry_run, tmp_path):
    cache = tmp_path / "hub-cache"
    install_in_hub_cache(dry_run / "model", MODEL_ID, cache)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),  # srn_hf, as the Space's requirements.txt installs it
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # the example images
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
    }
    completed = subprocess.run(
        [sys.executable, "-c", RUN_SPACE_APP, str(dry_run / "space" / "app.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    page = json.loads(completed.stdout.strip().splitlines()[-1])
    assert page["title"] == f"SRN demo: {MODEL_ID}"
    assert page["heading"].startswith(f"# {MODEL_ID}\n") and "5 labels, backbone `resnet18`" in page["heading"]
    # the examples are the model repository's own test images with their true labels, downloaded from the Hub cache
    assert page["examples"] == [f"true: {LABELS[0]}, {LABELS[2]}", "true: no label"]


def test_the_examples_of_a_repository_stay_inside_it(dry_run, tmp_path, monkeypatch):
    """The page of a Hub id shows the files its examples.json lists, downloaded from the repository: an entry that
    leads outside it is refused naming the entry, never read from this machine."""
    from huggingface_hub import constants

    from srn_hf.showcase import hub_examples

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at each download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = install_in_hub_cache(dry_run / "model", MODEL_ID, cache)
    assert [example.path for example in hub_examples(MODEL_ID)] == [
        snapshot / "examples" / "0-a.png",
        snapshot / "examples" / "1-b.png",
    ]
    tampered = tmp_path / "tampered"
    shutil.copytree(dry_run / "model", tampered)
    records = json.loads((tampered / "examples.json").read_text())
    records[1]["file"] = "../../../../../../etc/passwd"
    (tampered / "examples.json").write_text(json.dumps(records))
    snapshot = install_in_hub_cache(tampered, "org/tampered", cache)
    with pytest.raises(ValueError, match=rf"^{snapshot / 'examples.json'}: entry 1: file '\.\./\.\./.*' is not inside"):
        hub_examples("org/tampered")


def test_publish_with_space_pushes_the_model_then_the_space(model_dir, dry_run, hub_calls, capsys):
    assert cli_main(["publish", str(model_dir), "--repo-id", MODEL_ID, "--space", SPACE_ID]) == 0

    assert [(call[0], call[1]) for call in hub_calls] == [
        ("create_repo", MODEL_ID),
        ("create_commit", MODEL_ID),
        ("create_repo", SPACE_ID),
        ("create_commit", SPACE_ID),
    ]
    assert hub_calls[0][2]["repo_type"] == "model" and hub_calls[1][2]["repo_type"] == "model"
    assert hub_calls[2][2]["repo_type"] == "space" and hub_calls[2][2]["space_sdk"] == "gradio"
    assert hub_calls[3][2]["repo_type"] == "space"
    uploaded = hub_calls[3][3]
    assert sorted(uploaded) == SPACE_FILES
    for name, content in uploaded.items():  # the dry run wrote exactly what is pushed
        assert content == (dry_run / "space" / name).read_bytes(), name
    assert f"published {SPACE_ID} in one commit" in capsys.readouterr().out


def test_a_bad_space_id_is_refused_before_anything_is_pushed(model_dir, hub_unreachable, capsys):
    assert cli_main(["publish", str(model_dir), "--repo-id", MODEL_ID, "--space", "not a space id"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("srn-hf publish: error:") and "not a space id" in error and len(error.splitlines()) == 1
