"""The stamp-scene generator: layout rules, visibility labels, disjoint splits, reproducibility, saving, CLI."""

import json
import os

import numpy as np
import pytest
from datasets import ClassLabel, List, load_from_disk
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from srn_hf.data import label_names, load_multilabel_dataset
from srn_hf.data.stamp_scenes import (
    TUXPAINT_BACKGROUNDS,
    TUXPAINT_CLASSES,
    TUXPAINT_DIR,
    VARIANTS,
    ClassRule,
    PlacedObject,
    SceneType,
    SplitLibrary,
    box_overlap,
    curated_tuxpaint_stamps,
    fingerprint,
    folder_stamps,
    generate_stamp_scenes,
    load_stamp,
    load_stamp_scenes,
    main,
    paste_objects,
    paste_shadow,
    plan_objects,
    scene_types_for,
    split_libraries,
    split_stamps,
)

COLORS = {"bird": (20, 20, 20), "cattle": (120, 70, 30), "robot": (160, 160, 200)}


def write_stamp(path, color, size=(40, 30), shape="ellipse"):
    """An RGBA cut-out: an opaque shape on a transparent background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = PILImage.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(stamp)
    box = (0, 0, size[0] - 1, size[1] - 1)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=(*color, 255))
    stamp.save(path)
    return path


@pytest.fixture
def data_scene_sources(tmp_path):
    """root/<class>/*.png cut-outs (two classes with known rules, one unknown) and root/<role>/* photos."""
    stamps = tmp_path / "stamps"
    for name, color in COLORS.items():
        for k in range(4):
            write_stamp(stamps / name / f"{name}{k}.png", tuple(min(255, c + 20 * k) for c in color))
    write_stamp(stamps / "cattle" / "cattle0_mirror.png", (1, 2, 3))
    backgrounds = tmp_path / "backgrounds"
    rng = np.random.default_rng(0)
    for role, color in {"sky": (110, 160, 230), "grass": (60, 140, 40)}.items():
        (backgrounds / role).mkdir(parents=True)
        for k in range(3):
            pixels = np.clip(np.array(color) + rng.normal(0, 12, (60, 80, 3)), 0, 255).astype(np.uint8)
            PILImage.fromarray(pixels).save(backgrounds / role / f"{role}{k}.jpg")
    return stamps, backgrounds


def generate(sources, output_dir=None, **options):
    stamps, backgrounds = sources
    settings = {"sizes": (24, 8, 8), "image_size": 64, "seed": 3, "num_workers": 1, "progress": False}
    return generate_stamp_scenes(output_dir, stamps_dir=stamps, backgrounds=backgrounds, **{**settings, **options})


def test_generated_dataset_layout_labels_and_rules(data_scene_sources, tmp_path):
    dataset = generate(data_scene_sources, tmp_path / "scenes")
    assert list(dataset) == ["train", "validation", "test"]
    assert [len(split) for split in dataset.values()] == [24, 8, 8]
    assert dataset["train"].features["labels"] == List(ClassLabel(names=["bird", "cattle", "robot"]))
    assert set(dataset["train"]["scene"]) == {"farm", "mixed"}  # cattle anchors farms, robot gets a mixed scene
    for split in dataset.values():
        for row in split:
            assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
            visible = {box["label"] for box in row["boxes"] if box["visible_fraction"] >= 0.4}
            assert row["labels"] == sorted(visible)  # a label exactly where enough of an object shows
            for box in row["boxes"]:
                x0, y0, x1, y1 = box["bbox"]
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                if box["label"] == 0 and row["scene"] == "farm":  # birds fly above the horizon (<= half height)
                    assert y0 < 0.5 * 64
    farm_birds = [
        box for row in dataset["train"] if row["scene"] == "farm" for box in row["boxes"] if box["label"] == 0
    ]
    assert farm_birds

    saved = load_from_disk(str(tmp_path / "scenes"))
    assert saved["test"]["labels"] == dataset["test"]["labels"]
    sheet = PILImage.open(tmp_path / "scenes" / "contact_sheet.png")
    assert sheet.width == 6 * 64 and sheet.height > 4 * 64
    reloaded = load_multilabel_dataset("stamp_scenes", path=tmp_path / "scenes")  # no regeneration
    assert label_names(reloaded) == ["bird", "cattle", "robot"]
    assert reloaded["validation"]["image_id"] == dataset["validation"]["image_id"]


def test_instances_and_backgrounds_are_disjoint_between_splits(data_scene_sources):
    dataset = generate(data_scene_sources)
    stamps = {split: {box["stamp"] for row in data["boxes"] for box in row} for split, data in dataset.items()}
    backgrounds = {
        split: {source for row in data["backgrounds"] for source in row} - {"reflection"}
        for split, data in dataset.items()
    }
    for first, second in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not stamps[first] & stamps[second]
        assert not backgrounds[first] & backgrounds[second]
    dealt = split_stamps({"cattle": [str(p) for p in sorted((data_scene_sources[0] / "cattle").glob("*.png"))]}, 3)
    with_mirror = [split for split in dealt if any("cattle0" in path for path in dealt[split]["cattle"])]
    assert len(with_mirror) == 1 and len(dealt[with_mirror[0]]["cattle"]) >= 2  # a mirror stays with its original


def test_same_seed_same_images_whatever_the_workers(data_scene_sources):
    one = generate(data_scene_sources, num_workers=1)
    two = generate(data_scene_sources, num_workers=2)
    other_seed = generate(data_scene_sources, seed=4)
    raw = one["train"].cast_column("image", one["train"].features["image"].__class__(decode=False))
    raw_two = two["train"].cast_column("image", two["train"].features["image"].__class__(decode=False))
    assert [r["bytes"] for r in raw["image"]] == [r["bytes"] for r in raw_two["image"]]
    assert one["train"]["labels"] == two["train"]["labels"]
    assert one["train"]["labels"] != other_seed["train"]["labels"]


def test_visible_fraction_counts_occlusion_and_frame_cropping(tmp_path):
    square = str(write_stamp(tmp_path / "square.png", (200, 0, 0), size=(20, 20), shape="rectangle"))
    canvas = PILImage.new("RGB", (64, 64), "white")
    hidden = PlacedObject("a", square, (10, 10, 20, 20), False, order=1.0, shadow=False)
    cover = PlacedObject("b", square, (5, 5, 30, 30), False, order=2.0, shadow=False)
    cropped = PlacedObject("c", square, (-15, 40, 20, 20), False, order=3.0, shadow=False)
    results = paste_objects(np.random.default_rng(0), canvas, [cover, cropped, hidden], 64)
    fractions = {obj.name: (visible, box) for obj, visible, box in results}
    assert fractions["a"] == (0.0, None)  # pasted first (farther), entirely behind b
    assert fractions["b"][0] == 1.0 and fractions["b"][1] == (5, 5, 35, 35)
    assert fractions["c"][0] == pytest.approx(0.25) and fractions["c"][1] == (0, 40, 5, 60)


def test_classes_without_their_scene_type_appear_in_mixed_scenes(data_scene_sources):
    stamps, _ = data_scene_sources
    for path in (stamps / "cattle").iterdir():
        path.unlink()
    (stamps / "cattle").rmdir()
    dataset = generate(data_scene_sources)  # no cattle: no farm, so birds have no scene type of their own
    assert set(dataset["train"]["scene"]) == {"mixed"}
    counts = np.bincount([label for row in dataset["train"]["labels"] for label in row], minlength=2)
    assert label_names(dataset) == ["bird", "robot"] and (counts > 0).all()


def test_too_few_cut_outs_for_three_disjoint_splits(data_scene_sources):
    stamps, _ = data_scene_sources
    os.remove(stamps / "robot" / "robot0.png")
    os.remove(stamps / "robot" / "robot1.png")
    with pytest.raises(ValueError, match="class 'robot' has 2 cut-out"):
        generate(data_scene_sources)


def test_command_line(data_scene_sources, tmp_path, capsys):
    stamps, backgrounds = data_scene_sources
    main(
        [
            str(tmp_path / "cli"),
            "--stamps-dir",
            str(stamps),
            "--backgrounds",
            str(backgrounds),
            "--sizes",
            "6",
            "3",
            "3",
            "--image-size",
            "48",
            "--workers",
            "1",
        ]
    )
    assert "classes: ['bird', 'cattle', 'robot']" in capsys.readouterr().out
    assert [len(split) for split in load_from_disk(str(tmp_path / "cli")).values()] == [6, 3, 3]


def test_svg_cut_outs_are_drawn_and_split_with_their_png(tmp_path):
    drawing = tmp_path / "stamps" / "boat" / "sail.svg"
    drawing.parent.mkdir(parents=True)
    drawing.write_text(  # a red 60x20 hull inside a transparent 100x100 page
        '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
        '<rect x="20" y="40" width="60" height="20" fill="#ff0000"/></svg>'
    )
    write_stamp(tmp_path / "stamps" / "boat" / "sail.png", (0, 0, 255))
    write_stamp(tmp_path / "stamps" / "boat" / "junk.png", (0, 0, 200))
    write_stamp(tmp_path / "stamps" / "boat" / "tug.png", (0, 0, 150))
    stamp = load_stamp(str(drawing), 90)
    assert stamp.mode == "RGBA" and stamp.size == (90, 30)  # cropped to the opaque hull, longest side 90
    assert np.asarray(stamp)[15, 45].tolist() == [255, 0, 0, 255]
    files = folder_stamps(tmp_path / "stamps")["boat"]
    assert sorted(os.path.basename(path) for path in files) == ["junk.png", "sail.png", "sail.svg", "tug.png"]
    dealt = split_stamps({"boat": files}, 0)
    with_sail = [split for split in dealt if any("sail" in path for path in dealt[split]["boat"])]
    assert len(with_sail) == 1  # the drawing and the photo of one name are one instance

    broken = tmp_path / "broken.svg"
    broken.write_text("<svg><rect")
    with pytest.raises(ValueError, match="broken.svg: not a readable SVG"):
        load_stamp(str(broken), 90)


@pytest.mark.skipif(not (TUXPAINT_DIR / "stamps").is_dir(), reason="Debian's tuxpaint-stamps-default is not installed")
def test_curated_tuxpaint_scenes():
    dataset = generate_stamp_scenes(None, sizes=(60, 20, 20), image_size=96, num_workers=2, progress=False)
    assert label_names(dataset) == sorted(TUXPAINT_CLASSES)
    stamps = {split: {box["stamp"] for row in data["boxes"] for box in row} for split, data in dataset.items()}
    assert not stamps["train"] & stamps["test"] and not stamps["validation"] & stamps["test"]
    curated = {path for paths in TUXPAINT_CLASSES.values() for path in paths}
    assert set().union(*stamps.values()) <= curated
    assert any(path.endswith(".svg") for path in set().union(*stamps.values()))  # SVG drawings are drawn too
    for split, data in dataset.items():
        sources = {source for row in data["backgrounds"] for source in row}
        assert sources <= {b.source for b in TUXPAINT_BACKGROUNDS if b.split == split}
    counts = np.bincount([label for row in dataset["train"]["labels"] for label in row], minlength=13)
    assert (counts > 0).all()  # every class appears in 60 training scenes
    kitchen = [row for row in dataset["train"] if row["scene"] == "kitchen"]
    kitchen_classes = {label_names(dataset)[label] for row in kitchen for label in row["labels"]}
    assert kitchen_classes <= {"fruit", "vegetable", "kitchenware", "insect"}  # no cattle on the table


@pytest.mark.parametrize("seed", range(3))
def test_shadow_drawn_on_its_region_equals_the_whole_canvas_one(seed):
    """`paste_shadow` draws and blurs only around the ellipse: the canvas must be the one that drawing and blurring
    the whole canvas gives, for ellipses inside, across the edges and outside of it, small and large."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        region, whole = PILImage.fromarray(pixels), PILImage.fromarray(pixels)
        x, y = map(float, rng.uniform(-60, 110, 2))
        width, height = map(float, rng.uniform(2, 120, 2))
        ellipse = (x + 0.1 * width, y + 0.93 * height, x + 0.9 * width, y + 1.04 * height)
        paste_shadow(region, ellipse, height)
        shadow = PILImage.new("L", whole.size, 0)
        ImageDraw.Draw(shadow).ellipse(ellipse, fill=110)
        whole.paste((0, 0, 0), (0, 0), shadow.filter(ImageFilter.GaussianBlur(max(1.0, height / 30))))
        assert region.tobytes() == whole.tobytes()


# ---------------------------------------------------------------------------------------------- variants

needs_tuxpaint = pytest.mark.skipif(
    not (TUXPAINT_DIR / "stamps").is_dir(), reason="Debian's tuxpaint-stamps-default is not installed"
)
COMPARISON_VARIANTS = [name for name in VARIANTS if name != "demo"]


def small_variant(variant, seed=0):
    return generate_stamp_scenes(None, sizes=(6, 3, 3), seed=seed, num_workers=1, progress=False, variant=variant)


@needs_tuxpaint
@pytest.mark.parametrize("variant", COMPARISON_VARIANTS)
def test_comparison_variant_is_seeded_and_differs_from_the_demo(variant):
    chosen = VARIANTS[variant]
    dataset = small_variant(variant)
    fingerprints = {split: fingerprint(data) for split, data in dataset.items()}
    assert fingerprints == {split: fingerprint(data) for split, data in small_variant(variant).items()}
    assert fingerprint(small_variant(variant, seed=1)["train"]) != fingerprints["train"]
    assert len(set(fingerprints.values())) == 3

    names = label_names(dataset)
    assert names == sorted(chosen.classes) and 8 <= len(names) <= 12
    assert len(set(names) & set(TUXPAINT_CLASSES)) <= 1  # mostly other labels than the demo's
    assert dataset["test"][0]["image"].size == (chosen.image_size, chosen.image_size) != (224, 224)
    stamps = {split: {box["stamp"] for row in data["boxes"] for box in row} for split, data in dataset.items()}
    assert not stamps["train"] & stamps["test"] and not stamps["validation"] & stamps["test"]
    assert set(dataset["train"]["scene"]) <= {scene.name for scene in chosen.scene_types}
    for split in dataset.values():  # the variant's occlusion rule decides the labels
        for row in split:
            visible = {box["label"] for box in row["boxes"] if box["visible_fraction"] >= chosen.min_visible}
            assert row["labels"] == sorted(visible)


def plans(variant, count=150, size=128):
    """`count` scene plans of the variant's training split: (scene, horizon, placed objects)."""
    chosen = VARIANTS[variant]
    stamps = curated_tuxpaint_stamps(TUXPAINT_DIR, chosen.classes)
    library = split_libraries(stamps, list(TUXPAINT_BACKGROUNDS), 0)["train"]
    scenes = scene_types_for(sorted(stamps), chosen)
    rng = np.random.default_rng(0)
    for index in range(count):
        scene = scenes[index % len(scenes)]
        horizon = rng.uniform(*scene.horizon)
        yield scene, horizon, plan_objects(rng, library, scene, scene.surface, horizon, size, chosen.max_overlap)


def worst_overlap(placed):
    return max([box_overlap(a.box, b.box) for i, a in enumerate(placed) for b in placed[i + 1 :]], default=0.0)


@needs_tuxpaint
def test_placement_rules_differ_between_the_variants():
    size = 128
    demo = [placed for _, _, placed in plans("demo")]
    street = list(plans("street-sky"))
    tabletop = [placed for _, _, placed in plans("tabletop")]

    # Occlusion: the demo lets boxes cover each other; street-sky never more than 30 % of a box.
    assert max(worst_overlap(placed) for placed in demo) > 0.5
    assert max(worst_overlap(placed) for _, _, placed in street) <= 0.3

    # Street-sky: buildings stand on the horizon, rail cars in a row at one depth, the moon or sun in the sky.
    bottoms = {"building": [], "rail car": []}
    for _, horizon, placed in street:
        for obj in placed:
            left, top, width, height = obj.box
            if obj.name == "building":
                bottoms["building"].append((top + height) / size - horizon)
            if obj.name == "moon/sun":
                assert top + height / 2 < horizon * size
        cars = {round(obj.box[1] + obj.box[3], 6) for obj in placed if obj.name == "rail car"}
        assert len(cars) <= 1
        bottoms["rail car"] += [len(cars)]
    assert bottoms["building"] and 0 < min(bottoms["building"]) and max(bottoms["building"]) < 0.1
    assert any(bottoms["rail car"])

    # Tabletop: seen from above, things turned any way without shadow (the demo's stand upright with one), chess
    # pieces in rows.
    assert all(obj.angle == 0 for placed in demo for obj in placed)
    turned = [obj for placed in tabletop for obj in placed if obj.name != "chess piece"]
    assert all(not obj.shadow for obj in turned) and np.mean([obj.angle != 0 for obj in turned]) == 1.0
    rows = [[obj for obj in placed if obj.name == "chess piece"] for placed in tabletop]
    rows = [row for row in rows if len(row) > 1]
    assert rows and all(len({round(o.box[1] + o.box[3] / 2, 6) for o in row}) == 1 for row in rows)


@needs_tuxpaint
def test_a_variant_is_generated_into_its_own_folder_and_checked_on_loading(tmp_path):
    folder = tmp_path / "tabletop"
    options = {"sizes": [4, 3, 3], "num_workers": 1, "progress": False}
    dataset = load_multilabel_dataset("stamp_scenes", path=folder, generate=True, variant="tabletop", **options)
    saved = json.loads((folder / "stamp_scenes.json").read_text())
    assert saved["variant"] == "tabletop" and saved["image_size"] == 160 and saved["sizes"] == [4, 3, 3]
    assert saved["fingerprints"] == {split: fingerprint(data) for split, data in dataset.items()}
    assert label_names(load_stamp_scenes(folder, variant="tabletop")) == label_names(dataset)
    assert label_names(load_stamp_scenes(folder)) == label_names(dataset)  # no variant asked: what is there
    with pytest.raises(
        ValueError, match=r"tabletop holds stamp scenes generated with variant='tabletop', not .*'street-sky'"
    ):
        load_stamp_scenes(folder, variant="street-sky", generate=True)
    with pytest.raises(ValueError, match=r"seed=0, not seed=1"):
        load_stamp_scenes(folder, seed=1)
    with pytest.raises(ValueError, match=r"variant='kitchen' is not a stamp-scene variant; choose one of"):
        load_stamp_scenes(tmp_path / "other", generate=True, variant="kitchen")


def test_things_sitting_on_a_host_left_out_by_the_overlap_rule_are_left_out_too(tmp_path):
    colors = {"rock": (90, 90, 90), "flower": (200, 0, 0), "insect": (0, 0, 0)}
    library = SplitLibrary(
        {
            name: [str(write_stamp(tmp_path / name / f"{k}.png", color, size=(40, 40))) for k in range(3)]
            for name, color in colors.items()
        },
        {},
    )
    rules = {
        "rock": ClassRule("surface", size=(3.0, 3.0), max_count=1),  # as large as the frame: little room left
        "flower": ClassRule("surface", size=(0.2, 0.3), max_count=1),
        "insect": ClassRule("near", size=(0.1, 0.15), near=("flower",)),
    }
    scene = SceneType("garden", "grass", False, (0.0, 0.25), 1.0, dict.fromkeys(colors, 1.0), ("rock",), rules=rules)
    names = [
        [obj.name for obj in plan_objects(np.random.default_rng(seed), library, scene, "grass", 0.1, 64, 0.05)]
        for seed in range(40)
    ]
    assert all("rock" in plan for plan in names)
    assert any("flower" in plan for plan in names)
    without_host = [plan for plan in names if "flower" not in plan]
    assert without_host and all("insect" not in plan for plan in without_host)
