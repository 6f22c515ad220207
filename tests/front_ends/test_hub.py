"""Hub publishing: the Hub-ready folder, its model card, the one-commit push, and loading what was published.

Everything is real (timm backbone, transformers Auto classes and pipeline, huggingface_hub's card parsing and
cache lookup) except the network edge of the push: `HfApi.create_repo` and `HfApi.create_commit`, which record their
calls (conftest's `hub_calls`) or refuse them (`hub_unreachable`).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import LABELS, install_in_hub_cache, random_images, small_model
from huggingface_hub import ModelCard, metadata_load, scan_cache_dir
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from transformers import pipeline

import srn_hf
from srn_hf import SRNForImageClassification
from srn_hf.cli import main as cli_main
from srn_hf.hub import CardOptions, hub_folder_files, publish, write_hub_folder
from srn_hf.metrics import METRIC_NAMES, multilabel_metrics
from srn_hf.model_folder import read_splits_file, write_splits_file
from srn_hf.processing import create_image_processor
from srn_hf.recipe import Recipe
from srn_hf.showcase import keep_examples
from srn_hf.stages import STAGES

REPO_ID = "org/srn-demo"
EXPECTED_FILES = {  # of a model folder alone: no image of its data, so no attention picture
    "README.md",
    "config.json",
    "configuration_srn.py",
    "model.safetensors",
    "modeling_srn.py",
    "pipeline_srn.py",  # the remote code of config.json's custom_pipelines, with the files it imports
    "fast.py",
    "images.py",
    "preprocessor_config.json",
}


@pytest.fixture(scope="module")
def plain_model_dir(tmp_path_factory) -> Path:
    """A folder of `save_pretrained` only: no image processor, no metrics.json."""
    folder = tmp_path_factory.mktemp("plain") / "model"
    small_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> Path:
    """OUTPUT_DIR of a training run as examples/train_stages.py leaves it: final/, metrics.json.

    The figures are real: `multilabel_metrics` of each stage's prediction of the model on random images and labels.
    The recipe's output_dir is this machine's absolute path, which the card must not publish.
    """
    output_dir = tmp_path_factory.mktemp("run")
    model = small_model(seed=1)
    model.save_pretrained(output_dir / "final")
    processor = create_image_processor(model.config)
    processor.save_pretrained(output_dir / "final")
    rng = np.random.default_rng(0)
    splits = {"validation": random_images(12, seed=1), "test": random_images(16, seed=2)}
    labels = {split: rng.integers(0, 2, (len(images), len(LABELS))) for split, images in splits.items()}
    labels["test"][:, 0] = 1  # every label has positives in each split
    labels["test"][0, :] = 1
    labels["validation"][0, :] = 1
    with torch.no_grad():
        outputs = {split: model(**processor(images, return_tensors="pt")) for split, images in splits.items()}
    stages = [
        {
            "stage": stage.number,
            "prediction": stage.prediction,
            "best_epoch": stage.number,
            **{
                split: multilabel_metrics(torch.sigmoid(getattr(outputs[split], stage.prediction)), labels[split])
                for split in splits
            },
        }
        for stage in STAGES.values()
    ]
    recipe = Recipe(output_dir=str(output_dir)).to_dict()
    recipe["data"]["options"] = {"data_dir": str(output_dir / "data")}
    metrics = {
        "recipe": recipe,
        "dataset": {
            "name": "stamp_scenes",
            "label_names": LABELS,
            "splits": {"train": 40, "validation": 12, "test": 16},
        },
        "stages": stages,
    }
    # The images of the model's own data the run keeps for the card and the demo page (train_stages.keep_run_examples).
    test_split = datasets.Dataset.from_dict(
        {
            "image": splits["test"][:3],
            "image_id": ["test-0", "test-1", "test-2"],
            "labels": [np.flatnonzero(row).tolist() for row in labels["test"][:3]],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "labels": datasets.Sequence(datasets.ClassLabel(names=LABELS)),
            }
        ),
    )
    keep_examples(test_split, "test", LABELS, output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics))
    splits_record = {"kind": "imagefolder", "splits": {"train": ["train/0.png"], "test": ["test/0.png"]}}
    write_splits_file(output_dir / "final", splits_record)
    return output_dir


@pytest.fixture(scope="module")
def published_run(training_run, tmp_path_factory) -> Path:
    """The Hub folder of the training run, as `srn-hf publish --dry-run` writes it."""
    folder = tmp_path_factory.mktemp("hub") / "srn-demo"
    assert (
        cli_main(
            [
                "publish",
                str(training_run / "final"),
                "--repo-id",
                REPO_ID,
                "--dry-run",
                str(folder),
                "--dataset-id",
                "org/stamp-scenes",
            ]
        )
        == 0
    )
    return folder


def test_plain_model_folder_becomes_a_complete_hub_folder(plain_model_dir, tmp_path):
    folder = write_hub_folder(plain_model_dir, tmp_path / "hub", REPO_ID)

    assert set(hub_folder_files(folder)) == EXPECTED_FILES
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    assert "pretrained_cfg" not in config
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 64}
    assert processor["image_processor_type"] == "ViTImageProcessor"

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-classification"
    assert "model-index" not in card.data.to_dict() and not card.data.eval_results  # no figures were measured
    assert "No evaluation figures were published" in card.text
    # No image of the model's own data and none given: no picture, never an unrelated stock photo.
    assert "attention_maps.png" not in card.text and "astronaut" not in card.text


def test_the_card_picture_is_the_runs_test_image_with_its_true_labels(published_run, training_run):
    kept = json.loads((training_run / "examples.json").read_text())[0]
    card = ModelCard.load(published_run / "README.md")
    assert "](attention_maps.png)" in card.text
    assert f"image {kept['image_id']} of the training run's test split" in card.text
    assert f"its true labels: {', '.join(kept['labels'])}" in card.text
    with Image.open(published_run / "attention_maps.png") as picture:
        assert picture.format == "PNG" and min(picture.size) > 100
    # the run's examples are published byte for byte, for the demo page of the Hub id (srn_hf.app, srn_hf.space)
    published = json.loads((published_run / "examples.json").read_text())
    assert [entry["labels"] for entry in published] == [
        entry["labels"] for entry in json.loads((training_run / "examples.json").read_text())
    ]
    for entry in published:
        assert (published_run / entry["file"]).read_bytes() == (
            training_run / "examples" / Path(entry["file"]).name
        ).read_bytes()


def test_a_given_example_image_is_the_cards_picture(plain_model_dir, tmp_path):
    random_images(1, seed=5)[0].save(tmp_path / "street.png")
    folder = write_hub_folder(plain_model_dir, tmp_path / "hub", REPO_ID, example_image=tmp_path / "street.png")
    assert set(hub_folder_files(folder)) == EXPECTED_FILES | {"attention_maps.png"}
    assert "the image street.png" in ModelCard.load(folder / "README.md").text


def test_the_runs_split_record_is_published_with_the_model(published_run, training_run):
    """So that `srn-hf calibrate` of the published model refuses its training and test images, as it does locally."""
    assert read_splits_file(published_run) == read_splits_file(training_run / "final")
    assert read_splits_file(published_run)["splits"]["test"] == ["test/0.png"]


def test_card_carries_the_run_figures_in_a_model_index_the_hub_parses(published_run, training_run):
    metrics = json.loads((training_run / "metrics.json").read_text())
    final_test = metrics["stages"][-1]["test"]
    readme = (published_run / "README.md").read_text()

    # huggingface_hub's own parsing: ModelCard, metadata_load, model_index_to_eval_results.
    card = ModelCard.load(published_run / "README.md")
    assert card.data.license == "apache-2.0" and card.data.datasets == ["org/stamp-scenes"]
    assert {"srn", "multi-label-image-classification", "resnet18"} <= set(card.data.tags)
    results = {result.metric_type: result for result in card.data.eval_results}
    assert set(results) == set(METRIC_NAMES)
    for name, result in results.items():
        assert result.metric_value == pytest.approx(final_test[name], abs=0.005)
        assert (result.task_type, result.dataset_type, result.dataset_split) == (
            "image-classification",
            "org/stamp-scenes",
            "test",
        )
    name, eval_results = model_index_to_eval_results(metadata_load(published_run / "README.md")["model-index"])
    assert name == "srn-demo" and len(eval_results) == len(METRIC_NAMES)
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()  # a lossless round trip

    # The per-stage table: one row per stage with its own prediction's test figures.
    for stage in metrics["stages"]:
        row = next(
            line
            for line in readme.splitlines()
            if line.startswith(f"| {stage['stage']} | y") and f"(`{stage['prediction']}`)" in line
        )
        assert f"{stage['test']['mAP']:.1f}" in row and f"{stage['test']['OF1']:.1f}" in row
    # The recipe stage by stage, with this run's settings, without places on the training machine.
    assert "| 2 | attention_trunk, attention, confidence |" in readme
    stage4 = next(line for line in readme.splitlines() if line.startswith("| 4 | 1 | "))  # stage 4: epochs, lr, ...
    assert f"| {metrics['recipe']['stage4']['lr']} |" in stage4
    assert str(training_run) not in readme and "output_dir" not in readme
    assert "| dog | " in readme  # the per-label AP table
    assert f'model="{REPO_ID}"' in readme


def test_loading_the_folder_without_srn_hf_gives_the_same_scores(published_run, tmp_path):
    """Also runs the card's "How to use" code on the folder: without srn_hf there, with srn_hf here."""
    image_file = tmp_path / "image.png"
    random_images(1, seed=7)[0].save(image_file)
    blocks = [
        block.replace('"org/srn-demo"', repr(str(published_run))).replace('"image.jpg"', repr(str(image_file)))
        for block in card_code_blocks((published_run / "README.md").read_text())
    ]
    needs_srn_hf = [block for block in blocks if "import srn_hf" in block]
    assert len(blocks) == 4 and len(needs_srn_hf) == 2
    scores = load_in_fresh_process(str(published_run), tmp_path, code=[b for b in blocks if b not in needs_srn_hf])
    assert_same_scores(scores, published_run)
    for block in needs_srn_hf:
        exec(block, {})


def test_loading_by_repository_id_from_an_offline_hub_cache(published_run, tmp_path):
    cache = tmp_path / "hub-cache"
    snapshot = install_in_hub_cache(published_run, REPO_ID, cache)
    cached = scan_cache_dir(cache)  # huggingface_hub recognises the layout as its own
    assert [repo.repo_id for repo in cached.repos] == [REPO_ID]
    files = {file.file_name for revision in next(iter(cached.repos)).revisions for file in revision.files}
    examples = {"examples.json", "0-test-0.png", "1-test-1.png", "2-test-2.png"}  # the run's, for the demo page
    assert files == EXPECTED_FILES | {"attention_maps.png", "splits.json"} | examples

    scores = load_in_fresh_process(REPO_ID, tmp_path, {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert_same_scores(scores, snapshot)


def test_publish_pushes_one_commit_with_every_file(training_run, published_run, hub_calls, capsys):
    """The network edge is faked: create_repo and create_commit record their calls (`hub_calls`); the rest runs for
    real."""
    code = cli_main(
        [
            "publish",
            str(training_run / "final"),
            "--repo-id",
            REPO_ID,
            "--private",
            "--token",
            "hf_test",
            "--dataset-id",
            "org/stamp-scenes",
        ]
    )

    assert code == 0 and "/commit/0123abc" in capsys.readouterr().out
    assert [call[0] for call in hub_calls] == ["create_repo", "create_commit"]
    _, repo_id, repo_kwargs, token = hub_calls[0]
    assert repo_id == REPO_ID and repo_kwargs["private"] is True and repo_kwargs["exist_ok"] is True
    assert token == "hf_test"
    _, repo_id, commit_kwargs, uploaded = hub_calls[1]
    assert repo_id == REPO_ID and commit_kwargs["commit_message"]
    # The dry run wrote exactly what is uploaded: the same files, byte for byte.
    assert sorted(uploaded) == hub_folder_files(published_run)
    for name, content in uploaded.items():
        assert content == (published_run / name).read_bytes(), name


def test_dry_run_prints_the_commit_and_touches_no_network(plain_model_dir, tmp_path, hub_unreachable, capsys):
    out_dir = tmp_path / "dry"
    assert publish(plain_model_dir, REPO_ID, dry_run_dir=out_dir) == out_dir
    assert set(hub_folder_files(out_dir)) == EXPECTED_FILES
    assert cli_main(["publish", str(plain_model_dir), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "dry2")]) == 0
    printed = capsys.readouterr().out
    assert "nothing pushed" in printed and all(name in printed for name in EXPECTED_FILES)


def test_card_options_reach_the_card_from_the_command_line_and_from_python(plain_model_dir, tmp_path):
    """`srn-hf publish --license/--base-model/--tag` and `publish(card=CardOptions(...))` write the same metadata."""
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} on {{ backbone }}\n")
    options = CardOptions(license="mit", base_model="timm/resnet18.a1_in1k", tags=["squares"], template_path=template)
    folder = publish(plain_model_dir, REPO_ID, dry_run_dir=tmp_path / "python", card=options)
    card = ModelCard.load(folder / "README.md")
    assert (card.data.license, card.data.base_model) == ("mit", "timm/resnet18.a1_in1k")
    assert "squares" in card.data.tags and card.text.strip() == f"# {REPO_ID.split('/')[-1]} on resnet18"
    assert (
        cli_main(
            [
                "publish",
                str(plain_model_dir),
                "--repo-id",
                REPO_ID,
                "--dry-run",
                str(tmp_path / "cli"),
                "--license",
                "mit",
                "--base-model",
                "timm/resnet18.a1_in1k",
                "--tag",
                "squares",
            ]
        )
        == 0
    )
    from_cli = ModelCard.load(tmp_path / "cli" / "README.md").data
    assert (from_cli.license, from_cli.base_model) == ("mit", "timm/resnet18.a1_in1k") and "squares" in from_cli.tags


def test_bad_input_is_refused_with_a_message_naming_it(plain_model_dir, training_run, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_hub_folder(tmp_path / "missing", tmp_path / "out", REPO_ID)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        write_hub_folder(tmp_path / "empty", tmp_path / "out", REPO_ID)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="model_type is 'vit'"):
        write_hub_folder(other, tmp_path / "out", REPO_ID)
    with pytest.raises(ValueError, match="Repo id"):
        write_hub_folder(plain_model_dir, tmp_path / "out", "not a repo id")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_hub_folder(plain_model_dir, tmp_path / "busy", REPO_ID)

    metrics = json.loads((training_run / "metrics.json").read_text())
    wrong_labels = tmp_path / "wrong_labels.json"
    wrong_labels.write_text(json.dumps({**metrics, "dataset": {**metrics["dataset"], "label_names": LABELS[::-1]}}))
    with pytest.raises(ValueError, match="wrong_labels.json: dataset.label_names"):
        write_hub_folder(plain_model_dir, tmp_path / "out", REPO_ID, metrics=wrong_labels)
    del metrics["stages"][1]["test"]["CF1"]
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"incomplete.json: stages\[1\].test lacks the metrics \['CF1'\]"):
        write_hub_folder(plain_model_dir, tmp_path / "out", REPO_ID, metrics=incomplete)

    assert cli_main(["publish", str(tmp_path / "empty"), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "x")]) == 2
    assert "holds no config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tampered",
    [
        {"AutoModel": "modeling_elsewhere.SRNModel"},  # a module the folder does not hold
        {"AutoModelForImageClassification": "modeling_srn.SRNModel"},  # srn_hf's file, another class
        {"AutoImageProcessor": "processing_sneaky.Processor"},  # code of its own beside srn_hf's
    ],
)
def test_publish_refuses_an_auto_map_that_is_not_srn_hfs(plain_model_dir, tmp_path, tampered, capsys):
    """The published config.json's auto_map is what `trust_remote_code=True` runs on its users' machines."""
    folder = tmp_path / "model"
    shutil.copytree(plain_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {**config["auto_map"], **tampered}
    (folder / "config.json").write_text(json.dumps(config))
    assert cli_main(["publish", str(folder), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "hub")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the loading bars
    assert len(errors) == 1 and errors[0].startswith(f"srn-hf publish: error: {folder / 'config.json'}: auto_map ")
    assert str(tampered) in errors[0] and "Traceback" not in errors[0]
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("entry", ["/etc/passwd", "../../../../etc/passwd", "link"])
def test_publish_refuses_an_example_outside_the_run(training_run, tmp_path, entry, capsys):
    """An examples.json entry outside its folder (absolute, `..`, or a symlink in the folder pointing out) is never
    copied into the Hub folder: refused in one line naming the entry."""
    run = tmp_path / "run"
    shutil.copytree(training_run, run, symlinks=True)
    if entry == "link":
        (run / "examples" / "link.png").symlink_to(training_run / "metrics.json")
        entry = "examples/link.png"
    records = json.loads((run / "examples.json").read_text())
    records[1]["file"] = entry
    (run / "examples.json").write_text(json.dumps(records))
    out_dir = tmp_path / "hub"
    assert cli_main(["publish", str(run / "final"), "--repo-id", REPO_ID, "--dry-run", str(out_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the loading bars
    assert len(errors) == 1 and errors[0].startswith(
        f"srn-hf publish: error: {run / 'examples.json'}: entry 1: file {entry!r} "
    )
    assert not out_dir.exists()


def test_a_failed_hub_folder_leaves_no_half_folder(plain_model_dir, tmp_path, small_disk):
    """A write that fails half-way (a real full disk) leaves the folder as it was, and no partial folder that a later
    upload or load would take for a model; a bad template or image is refused before anything is written."""
    from srn_hf.storage import StorageError

    (small_disk / "hub").mkdir()  # the previous folder: empty, as --dry-run wants it
    with pytest.raises(StorageError, match=r"^cannot write .*hub: no space left on the device \(.* free of 2\.1 MB\)"):
        write_hub_folder(plain_model_dir, small_disk / "hub", REPO_ID)  # the resnet18 weights do not fit
    assert [path.name for path in small_disk.iterdir()] == ["hub"] and not any((small_disk / "hub").iterdir())

    # Bad input is named before anything is written; then the folder is written whole.
    with pytest.raises(FileNotFoundError, match="missing.md does not exist"):
        write_hub_folder(
            plain_model_dir, tmp_path / "out", REPO_ID, card=CardOptions(template_path=tmp_path / "missing.md")
        )
    truncated = tmp_path / "truncated.png"
    random_images(1)[0].save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png: truncated or corrupt"):
        write_hub_folder(plain_model_dir, tmp_path / "again", REPO_ID, example_image=truncated)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["disk", "truncated.png"]
    assert set(hub_folder_files(write_hub_folder(plain_model_dir, tmp_path / "out", REPO_ID))) == EXPECTED_FILES
    assert sorted(path.name for path in tmp_path.iterdir()) == ["disk", "out", "truncated.png"]


def test_the_model_folder_names_moved_from_hub_still_import_from_it():
    """srn_hf.model_folder holds the loading and checking of model folders, srn_hf.metrics the figure names; the
    former places, srn_hf.hub and srn_hf.data.verify, still give the same objects for one release."""
    from srn_hf import hub, images, metrics, model_folder
    from srn_hf.data import verify

    moved = ["METRICS_FILE", "MissingModelFileError", "ModelFolderError", "PREPROCESSOR_FILE", "WEIGHTS_FILES"]
    moved += ["check_model_folder", "is_local_model", "load_image_processor", "load_model", "load_training_metrics"]
    moved += ["one_line", "weights_files"]  # srn_hf.model_folder's names of 0.1.0; the names it gained since are new
    for name in moved:
        assert getattr(hub, name) is getattr(model_folder, name), name
    assert hub.METRIC_NAMES is metrics.METRIC_NAMES and hub.THRESHOLDED_FIGURES is metrics.THRESHOLDED_FIGURES
    assert verify.decode_image is images.decode_image


def test_a_kill_while_the_hub_folder_is_written_leaves_no_model_folder(plain_model_dir, tmp_path):
    """A real SIGKILL once the weights are written (the attention picture and the card not yet): no OUT_DIR at all,
    only the hidden temporary folder, which the next write replaces."""
    import signal
    import time

    from srn_hf.model_folder import ModelFolderError, check_model_folder
    from srn_hf.storage import partial_path

    out_dir = tmp_path / "hub"
    code = (
        "from srn_hf.hub import write_hub_folder; "
        f"write_hub_folder({str(plain_model_dir)!r}, {str(out_dir)!r}, {REPO_ID!r})"
    )
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    writer = subprocess.Popen([sys.executable, "-c", code], env=environment, stderr=subprocess.DEVNULL)
    written = partial_path(out_dir) / "preprocessor_config.json"  # after the weights and config.json
    deadline = time.monotonic() + 120
    while not written.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    assert writer.returncode == -signal.SIGKILL, "the kill must land while the folder is written"
    assert (partial_path(out_dir) / "model.safetensors").is_file() and not (
        partial_path(out_dir) / "README.md"
    ).exists()
    assert not out_dir.exists()
    with pytest.raises(ModelFolderError, match="does not exist"):
        check_model_folder(out_dir)
    assert set(hub_folder_files(write_hub_folder(plain_model_dir, out_dir, REPO_ID))) == EXPECTED_FILES
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hub"]


# ----------------------------------------------------------------------------------------------------------------
# Helpers: a Hub cache as huggingface_hub lays out downloads, and loading in a process where srn_hf is absent.

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["srn_hf"] = None  # srn_hf cannot be imported: only the repository's remote code can run
    import numpy as np, torch
    from PIL import Image
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              pipeline)

    source, image_file = sys.argv[1], sys.argv[2]
    image = Image.open(image_file).convert("RGB")
    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(source)
    classifier = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True).eval()
    bare = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        logits = classifier(**inputs).logits[0]
        bare_logits = bare(**inputs).logits[0]
    tagger = pipeline("image-classification", model=source, trust_remote_code=True)
    predictions = tagger(image, top_k=None)
    for block in json.loads(sys.argv[3]):  # the card's code, which must run where srn_hf is absent
        exec(block, {})
    print(json.dumps({
        "config_class": type(config).__module__ + "." + type(config).__name__,
        "model_class": type(classifier).__module__ + "." + type(classifier).__name__,
        "bare_class": type(bare).__name__,
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "label_thresholds": config.label_thresholds,
        "scores": torch.sigmoid(logits).tolist(),
        "bare_scores": torch.sigmoid(bare_logits).tolist(),
        "pipeline": {p["label"]: p["score"] for p in predictions},
    }))
    """
)


def card_code_blocks(readme: str) -> list[str]:
    """The Python code blocks of a model card."""
    return [block.split("```")[0] for block in readme.split("```python\n")[1:]]


def load_in_fresh_process(source: str, tmp_path: Path, env: dict | None = None, code: list[str] = ()) -> dict:
    """Loads `source` (a folder or a repository id) through the Auto classes and pipeline in a new interpreter.

    `code`: Python blocks run there after the loading (the card's examples).
    """
    image_file = tmp_path / "image.png"
    random_images(1, seed=7)[0].save(image_file)
    process_env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), **(env or {})}
    process_env.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, source, str(image_file), json.dumps(list(code))],
        cwd=tmp_path,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["image_file"] = image_file
    return result


def assert_same_scores(loaded: dict, folder: Path) -> None:
    """The fresh process ran the remote code and scored the image as the in-process model does."""
    assert loaded["model_class"].startswith("transformers_modules.") and "srn_hf" not in loaded["model_class"]
    assert loaded["config_class"].endswith("configuration_srn.SRNConfig") and loaded["bare_class"] == "SRNModel"
    assert loaded["labels"] == LABELS and loaded["label_thresholds"] == {"dog": 0.7}
    model = SRNForImageClassification.from_pretrained(folder).eval()
    processor = create_image_processor(model.config)
    with torch.no_grad():
        expected = torch.sigmoid(
            model(**processor(Image.open(loaded["image_file"]).convert("RGB"), return_tensors="pt")).logits[0]
        )
    np.testing.assert_allclose(loaded["scores"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded["bare_scores"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose([loaded["pipeline"][name] for name in LABELS], expected.numpy(), atol=1e-5)


REMOTE_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["srn_hf"] = None  # srn_hf cannot be imported: only the folder's remote code can run
    from transformers import pipeline

    tagger = pipeline("multi-label-image-classification", model=sys.argv[1], trust_remote_code=True)
    print(json.dumps({"class": type(tagger).__module__, "labels": tagger(sys.argv[2], threshold=0.0)}))
    """
)


def test_the_multi_label_pipeline_loads_as_remote_code_without_srn_hf(tmp_path):
    """Every saved config names the pipeline in `custom_pipelines`, and pipeline_srn.py is saved beside the model."""
    folder = tmp_path / "model"
    model = small_model()
    model.save_pretrained(folder)
    create_image_processor(model.config).save_pretrained(folder)
    assert (
        json.loads((folder / "config.json").read_text())["custom_pipelines"]
        == srn_hf.configuration_srn.CUSTOM_PIPELINES
    )
    image_file = tmp_path / "image.png"
    random_images(1, seed=3)[0].save(image_file)
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE_SCRIPT, str(folder), str(image_file)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith("pipeline_srn")
    local = pipeline("multi-label-image-classification", model=str(folder))  # srn_hf here: no trust_remote_code
    expected = local(str(image_file), threshold=0.0)
    assert [item["label"] for item in result["labels"]] == [item["label"] for item in expected]
    np.testing.assert_allclose(
        [item["score"] for item in result["labels"]], [item["score"] for item in expected], atol=1e-5
    )
