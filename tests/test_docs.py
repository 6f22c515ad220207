"""The documentation a newcomer reads: every relative link resolves, the README's set-up commands are real, and the
python blocks of README.md and docs/*.md run (those that can offline; the others are listed with why).

Links are checked in README.md, docs/*.md and benchmarks/README.md: a relative target must be a file of the
repository, and a `#fragment` must name a heading of the target page (GitHub's anchor rules).
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code removed (links in code are not links)."""
    lines, in_code = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, seen = set(), {}
    for line in page.read_text(encoding="utf-8").splitlines() if page.suffix == ".md" else []:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match or line.startswith("#!"):
            continue
        anchor = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def relative_links(page: Path) -> list[str]:
    return [
        target
        for line in prose_lines(page)
        for target in LINK.findall(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def test_pages_are_found():
    names = {page.relative_to(REPO).as_posix() for page in PAGES}
    expected = {
        "README.md",
        "docs/training.md",
        "docs/inference.md",
        "docs/hub.md",
        "docs/benchmarks.md",
        "docs/data.md",
    }
    assert expected <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.is_file() or REPO not in linked.parents:
            broken.append(f"{target}: no such file in the repository")
        elif fragment and fragment not in heading_anchors(linked):
            broken.append(f"{target}: {linked.relative_to(REPO)} has no heading with the anchor #{fragment}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_set_up_commands_are_those_ci_and_the_scripts_run():
    """The README's two set-up commands name existing scripts, and its test command is the one CI runs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Set-up: two commands\n\n```bash\n" in readme, "README.md has no 'Set-up: two commands' bash block"
    block = readme.split("## Set-up: two commands\n\n```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash examples/run_demo.sh", "bash tests/run_tests.sh"]
    for command in commands:
        assert (REPO / command.split()[1]).is_file(), command
    ci_commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("bash ")
    ]
    assert ci_commands == ["bash tests/run_tests.sh"], ".ci/run must run the README's test command"


# --- The pages' python blocks, run --------------------------------------------------------------------------------
# Every ```python block of README.md and docs/*.md runs: the blocks of a page in page order, in one namespace, in a
# folder holding what the prose assumes (`docs_folder`: a small SRN saved as `my-srn`, `outputs/demo/final` and
# `runs/demo/final`, `street.jpg`, `photos/`, `my_data`; for docs/deploy.md an `exported` ONNX folder), with the
# names the prose takes as given bound to small real objects (`doc_names`). Except the blocks below, keyed by page
# and first line, each with why it cannot run offline here (or is run elsewhere).
HUB_ID = "loads a model by Hub id, offline here (tests/front_ends/test_hub.py loads one from a local Hub cache)"
NOT_RUN = {
    (
        "README.md",
        "import srn_hf  # registers SRN: AutoConfig, AutoModel, AutoModelForImageClassification, pipeline",
    ): HUB_ID,
    ("README.md", "import timm, srn_hf"): HUB_ID + " (hf-hub:...)",
    (
        "docs/ablations.md",
        "from srn_hf.localization import attention_peaks, label_boxes, pointing_game, pointing_game_table",
    ): ("reads a trained run's test outputs, labels and boxes (benchmarks/ablations.py runs it)"),
    (
        "docs/app.md",
        "from srn_hf.app import build_app",
    ): "launch() serves until interrupted (tests/front_ends/test_app.py serves the page)",
    (
        "docs/hub.md",
        "from srn_hf.hub import CardOptions, publish, write_hub_folder",
    ): "pushes to the Hub (tests/front_ends/test_hub.py)",
    ("docs/hub.md", "from transformers import AutoModelForImageClassification, pipeline"): HUB_ID,
    ("docs/inference.md", "import srn_hf  # registers SRN with transformers (Auto classes, pipeline) and timm"): HUB_ID,
    ("docs/inference.md", "import timm, srn_hf"): "pretrained=True downloads ImageNet weights from the Hub",
    (
        "docs/inference.md",
        'model = timm.create_model("srn", pretrained=True, pretrained_cfg_overlay=dict(file="runs/demo/final"))',
    ): (HUB_ID + " (hf-hub:...)"),
    ("docs/model.md", "from srn_hf import SRNConfig, SRNForImageClassification"): (
        "load_backbone_weights() downloads ImageNet weights from the Hub"
    ),
    ("docs/zoo.md", "import torch, srn_hf"): HUB_ID,
}
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOC_LABELS = ["person", "car", "dog", "toothbrush"]


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The page's python blocks: (line of the fence, code)."""
    text = page.read_text(encoding="utf-8")
    return [(text[: match.start()].count("\n") + 1, match.group(1)) for match in PYTHON_BLOCK.finditer(text)]


def page_name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]
# Pages whose blocks build big models, run with the slow tests (`-m slow`).
SLOW_PAGES = {
    "docs/zoo.md": "its timm block builds three ResNet-101 SRNs and runs them at 224",
    "docs/deploy.md": "its block reads an ONNX export of the model, which the test makes first (tens of seconds)",
}


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """The folder the blocks run in, with the files their prose assumes, all small and real."""
    import shutil

    import numpy as np
    from helpers import random_images, save_with_processor, small_srn, write_imagefolder
    from PIL import Image

    folder = tmp_path_factory.mktemp("docs")
    save_with_processor(small_srn(dict(enumerate(DOC_LABELS)), image_size=64), folder / "my-srn")
    for copy in ("outputs/demo/final", "runs/demo/final"):
        shutil.copytree(folder / "my-srn", folder / copy)
    images = random_images(3)
    for image, name in zip(images, ("street.jpg", "a.jpg", "b.png")):
        image.save(folder / name)
    (folder / "photos").mkdir()
    for index, image in enumerate(images[:2]):
        image.save(folder / "photos" / f"{index}.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "photos" / "small.png")
    write_imagefolder(folder / "my_data", {"train": [["car"], ["dog", "person"]], "validation": [["car"]]})
    return folder


def doc_names(folder: Path) -> dict:
    """The names the prose takes as given, bound to small real objects: a model, images, pixels, scores."""
    import datasets
    import numpy as np
    import torch
    from helpers import random_images
    from transformers.pipelines.pt_utils import KeyDataset

    from srn_hf.model_folder import load_model

    model = load_model(folder / "my-srn")
    rng = np.random.default_rng(0)
    images = random_images(2)
    scores = {split: rng.random((40, len(DOC_LABELS))) for split in ("validation", "test")}
    labels = {split: (rng.random((40, len(DOC_LABELS))) < 0.4).astype(np.int64) for split in ("validation", "test")}
    return {
        "model": model,
        "hf_model": model,
        "image": images[0],
        "pil_image": images[1],
        "x": torch.randn(2, 3, 224, 224),
        "pixel_values": torch.randn(2, 3, 64, 64),
        "labels": torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]),
        "dataset": datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image()),
        "KeyDataset": KeyDataset,
        "label_names": DOC_LABELS,
        "validation_scores": scores["validation"],
        "validation_labels": labels["validation"],
        "test_scores": scores["test"],
        "test_labels": labels["test"],
        "folder": str(folder / "calibrated-srn"),
    }


@pytest.mark.parametrize(
    "page",
    [pytest.param(page, marks=[pytest.mark.slow] if page_name(page) in SLOW_PAGES else []) for page in PAGES_WITH_CODE],
    ids=page_name,
)
def test_python_blocks_run(page, docs_folder, monkeypatch):
    blocks = [
        (line, code) for line, code in python_blocks(page) if (page_name(page), code.splitlines()[0]) not in NOT_RUN
    ]
    if not blocks:
        pytest.skip(f"{page_name(page)}: every python block is in NOT_RUN")
    monkeypatch.chdir(docs_folder)
    if page_name(page) == "docs/deploy.md" and not (docs_folder / "exported").exists():
        from srn_hf.export import export_model

        export_model(docs_folder / "my-srn", docs_folder / "exported", "onnx")  # the folder its block reads
    namespace = doc_names(docs_folder)
    for line, code in blocks:
        exec(compile(code, f"{page_name(page)}:{line + 1}", "exec"), namespace)  # a failure names the page and line


def test_every_block_not_run_exists_and_says_why():
    blocks = {(page_name(page), code.splitlines()[0]) for page in PAGES_WITH_CODE for _, code in python_blocks(page)}
    assert set(NOT_RUN) <= blocks, f"NOT_RUN names blocks no page has: {set(NOT_RUN) - blocks}"
    assert all(reason.strip() for reason in NOT_RUN.values())
