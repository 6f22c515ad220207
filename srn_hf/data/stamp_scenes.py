"""Stamp scenes: an offline multi-label demo set made of real object cut-outs pasted on real photos.

Each image is a scene of one type (farm, road, harbour, airfield, garden, kitchen). A scene type fixes the
background (a sky photo above a ground photo, split at a random horizon; or one surface filling the frame),
which classes may appear and how often, and where they stand:

- sky things (birds, aircraft) are placed above the horizon;
- things that stand (cattle, cars, boats, fruit...) stand on the scene's surface below the horizon, larger
  the nearer they stand (lower in the frame), behind one another from far to near, with a soft shadow;
  each class stands only on its surfaces (boats on water, fruit on a table, cattle on grass);
- insects sit near a flower or a piece of fruit.

So label co-occurrence and spatial layout carry signal as in real photos (boats with water birds, fruit with
kitchenware, insects on flowers, aircraft high), and a few "visitors" from other scene types, where they can
physically stand, keep the co-occurrence from being a rule. A class is a label of the image only if at least
`min_visible` (default 40%) of its cut-out's opaque pixels stay visible, after occlusion by objects pasted
later and cropping by the frame. Per image, `boxes` keeps every pasted object: class, box of its visible
pixels (x0, y0, x1, y1 in pixels), visible fraction, and cut-out file.

Object instances and backgrounds are disjoint between train, validation and test: each class's cut-out files
are dealt to the splits (60/20/20, at least one each, seeded), and each background photo belongs to one split.
Everything is seeded: the same arguments give the same images, whatever the number of worker processes.

Sources:
- cut-outs: any folder `root/<class>/*.png` (or `*.svg`) of RGBA images (`stamps_dir`), or by default the
  hand-curated `TUXPAINT_CLASSES` from Debian's `tuxpaint-stamps-default` (real photos, some drawings; GPL-2,
  read from the installed package, never copied into this repository). SVG drawings are rasterised with
  CairoSVG (the `demo` extra; it needs Debian's libcairo2);
- backgrounds: any folder `root/<role>/*` with roles `sky`, `grass`, `road`, `water`, `table`
  (`backgrounds`), or by default the curated `TUXPAINT_BACKGROUNDS`: photos from Debian's `tuxpaint-data`
  templates and textures bundled with scikit-image. Water can also be a sky photo's rippled reflection.

    python -m srn_hf.data.stamp_scenes OUTPUT_DIR [--sizes 1600 400 2000] [--image-size 224] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_from_disk
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

from .common import SPLITS, label_names, multilabel_features

TUXPAINT_DIR = Path("/usr/share/tuxpaint")  # Debian's tuxpaint-stamps-default and tuxpaint-data
VALIDATION_SHARE = TEST_SHARE = 0.2  # of each class's cut-out files
ROLES = ("sky", "grass", "road", "water", "table")
VISITOR_PROBABILITY = 0.15
BACKGROUND_MAX_SIDE = 640
JPEG_QUALITY = 90
STAMP_SUFFIXES = (".png", ".svg")
# train / validation / test images. A test split of a few thousand: below about half a point of mAP, a difference
# between two models on it is noise (measured on these scenes); the validation split only picks epochs.
DEFAULT_SIZES = (1600, 400, 2000)

# Hand-curated from the stamp files (rendered and looked at): each class holds what it says, e.g. a teddy bear
# is not a mammal, slugs and woodlice are not insects, a bison is not cattle. Paths are under stamps/.
TUXPAINT_CLASSES: dict[str, tuple[str, ...]] = {
    "aircraft": (
        "vehicles/flight/planes/747.png",
        "military/vehicles/f22_raptor.png",
        "vehicles/flight/balloon360.png",
        "vehicles/flight/planes/cartoon/plane.png",
        "vehicles/flight/cartoon/eddieCopter.png",
        "vehicles/flight/planes/plane.svg",
        "military/vehicles/mustang.svg",
    ),
    "bird": tuple(
        f"animals/birds/{name}.png"
        for name in (
            "adelaide-rosella",
            "blackbird",
            "crow",
            "cuckoo",
            "heron_greatblue_flying",
            "lark",
            "magpie",
            "owl",
            "pelican",
            "pigeon",
            "quetzal",
            "rainbow-lorikeet",
            "seagull",
            "silver-gull",
            "tucan",
            "vulture",
        )
    ),
    "boat": (
        "vehicles/ship/chineseJunk.png",
        "vehicles/ship/walnutBoat.png",
        "vehicles/ship/cartoon/tugboat.png",
        "vehicles/ship/cartoon/bathyscape.png",
        "vehicles/ship/sail_boat1.svg",
        "vehicles/ship/sail_boat2.svg",
    ),
    "car": (
        "vehicles/auto/beetle.png",
        "vehicles/auto/sedan.png",
        "vehicles/auto/sportscar2.png",
        "vehicles/race/indycar.png",
        "vehicles/auto/sportscar.svg",
        "vehicles/auto/sportscar3.svg",
        "vehicles/race/f1_car.svg",
    ),
    "cattle": tuple(f"animals/mammals/bovines/{name}.png" for name in ("bull", "cow", "cow_white", "yak", "zebu")),
    "flower": tuple(
        f"plants/flowers/{name}.png"
        for name in (
            "adeenia",
            "anemone_red",
            "anthoorium",
            "appooppanthady",
            "bolsom",
            "chemparathi",
            "daffodil",
            "flower1",
            "flower10",
            "flower2",
            "flower3",
            "flower4",
            "flower5",
            "flower6",
            "flower7",
            "flower8",
            "flower9",
            "iris",
            "marigold",
            "pigface",
            "red-gazania",
            "rose",
            "whitestar-petunia",
            "yellow-flower",
        )
    ),
    "fruit": tuple(
        f"food/fruit/{name}.png"
        for name in (
            "Apricot_whole",
            "Cherry_Stella",
            "Strawberry2",
            "apple_fuji",
            "apple_granny_smith",
            "apple_green",
            "apple_red",
            "apple_sierra_beauty",
            "apricot",
            "avocado",
            "banana",
            "cherimoya",
            "grapes",
            "kiwi",
            "lemon",
            "mandarine",
            "mango",
            "orange",
            "orange_seville",
            "pear",
            "pineapple",
            "pomegranate",
            "raspberry",
            "sliced_lime",
            "sliced_orange",
            "strawberry",
        )
    ),
    "insect": (
        "animals/insects/bee.png",
        "animals/insects/fly.png",
        "animals/insects/grasshopper.png",
        "animals/insects/hornet.png",
        "animals/insects/hoverfly.png",
        "animals/insects/mantis.png",
        "animals/insects/xanthia.png",
        "animals/insects/cartoon/butterfly.png",
        "animals/insects/cartoon/dragonfly.png",
    ),
    "kitchenware": (
        "household/dishes/glass.png",
        "household/dishes/mug.png",
        "household/dishes/pitcher_small.png",
        "household/dishes/teapot.png",
        "household/kettle.png",
        "household/dishes/utensils/pepper_grinder.png",
        "household/dishes/cartoon/pasta_pot.png",
        "household/dishes/cartoon/pressure_cooker.png",
        "household/dishes/coffeecup.svg",
        "household/dishes/expresso.svg",
    ),
    "poultry": tuple(
        f"animals/birds/{name}.png"
        for name in (
            "chicken_profile",
            "duck",
            "drake",
            "gander",
            "guineafowl",
            "helmeted_guineafowl",
            "hen",
            "rooster",
            "turkey",
        )
    ),
    "sheep/goat": tuple(
        f"animals/mammals/bovines/{name}.png" for name in ("goat", "mountaingoat", "ram", "sheep", "sheep_lamb")
    ),
    "truck": (
        "vehicles/auto/truck.png",
        "vehicles/emergency/firetruck.png",
        "vehicles/garbagetruck.png",
        "vehicles/construction/dumper.png",
        "vehicles/construction/cartoon/terex.png",
        "vehicles/construction/cartoon/cementMixer.png",
        "vehicles/construction/cartoon/towTruck.png",
        "vehicles/emergency/cartoon/fire_engine.png",
        "vehicles/blue_truck.svg",
        "vehicles/iso_fireengine.svg",
        "vehicles/iso_lorry1.svg",
        "vehicles/iso_lorry2.svg",
        "vehicles/iso_lorry3.svg",
        "vehicles/iso_lorry4.svg",
    ),
    "vegetable": tuple(  # culinary vegetables, as tuxpaint files them (tomato included)
        f"food/vegetables/{name}.png"
        for name in (
            "broccoli",
            "carrot",
            "chilepepper",
            "corn",
            "eggplant",
            "garlic",
            "garlics",
            "lettuce",
            "mushroom",
            "onion",
            "pattypan_squash",
            "pepper",
            "potato",
            "pumpkin_small",
            "redlettuce",
            "tomato",
            "yam",
            "yellowpepper",
        )
    ),
}


@dataclass(frozen=True)
class ClassRule:
    """Where a class goes in a scene and how large it is.

    place: `"sky"` (above the horizon), `"surface"` (standing on the scene's surface, perspective-scaled), or
        `"near"` (sitting on an object of one of the `near` classes).
    surfaces: the surface roles it can stand on; empty means any.
    size: range of its longest side as a fraction of the image side (for standing things: at the front).
    max_count: the most instances in one image.
    """

    place: str = "surface"
    surfaces: tuple[str, ...] = ()
    size: tuple[float, float] = (0.25, 0.45)
    max_count: int = 2
    near: tuple[str, ...] = ()


CLASS_RULES: dict[str, ClassRule] = {
    "aircraft": ClassRule("sky", size=(0.3, 0.5), max_count=2),
    "bird": ClassRule("sky", size=(0.12, 0.22), max_count=4),
    "boat": ClassRule("surface", ("water",), (0.35, 0.6), 3),
    "car": ClassRule("surface", ("road", "grass"), (0.4, 0.6), 3),
    "cattle": ClassRule("surface", ("grass",), (0.35, 0.55), 3),
    "flower": ClassRule("surface", ("grass",), (0.22, 0.4), 5),
    "fruit": ClassRule("surface", ("table",), (0.2, 0.34), 4),
    "insect": ClassRule("near", size=(0.1, 0.18), max_count=3, near=("flower", "fruit")),
    "kitchenware": ClassRule("surface", ("table",), (0.3, 0.5), 2),
    "poultry": ClassRule("surface", ("grass", "road"), (0.18, 0.3), 4),
    "sheep/goat": ClassRule("surface", ("grass",), (0.3, 0.45), 4),
    "truck": ClassRule("surface", ("road", "grass"), (0.5, 0.75), 2),
    "vegetable": ClassRule("surface", ("table",), (0.2, 0.34), 4),
}


@dataclass(frozen=True)
class SceneType:
    """A kind of scene: its surface, whether it shows sky, where the horizon is, and who appears how often.

    classes: the probability that each class appears; if none of the `anchors` was drawn, one is added.
    horizon: range of the horizon's height as a fraction of the image height (for scenes without sky, a
        virtual horizon for the perspective of the surface).
    free_placement: place every class by the default rule (standing on any surface), ignoring CLASS_RULES.
    """

    name: str
    surface: str
    sky: bool
    horizon: tuple[float, float]
    weight: float
    classes: dict[str, float] = field(default_factory=dict)
    anchors: tuple[str, ...] = ()
    free_placement: bool = False

    def rule(self, name: str) -> ClassRule:
        """How class `name` is placed in this scene."""
        return ClassRule() if self.free_placement else CLASS_RULES.get(name, ClassRule())


SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType(
        "farm",
        "grass",
        True,
        (0.3, 0.5),
        1.0,
        {"cattle": 0.55, "sheep/goat": 0.55, "poultry": 0.5, "bird": 0.4, "truck": 0.1},
        ("cattle", "sheep/goat", "poultry"),
    ),
    SceneType(
        "road",
        "road",
        True,
        (0.3, 0.5),
        1.0,
        {"car": 0.85, "truck": 0.5, "bird": 0.3, "aircraft": 0.15},
        ("car", "truck"),
    ),
    SceneType("harbour", "water", True, (0.3, 0.55), 0.9, {"boat": 0.9, "bird": 0.6, "aircraft": 0.2}, ("boat",)),
    SceneType(
        "airfield",
        "road",
        True,
        (0.62, 0.85),
        0.5,
        {"aircraft": 0.9, "bird": 0.4, "car": 0.25, "truck": 0.25},
        ("aircraft",),
    ),
    SceneType("garden", "grass", False, (0.0, 0.25), 0.8, {"flower": 0.95, "insect": 0.6}, ("flower",)),
    SceneType(
        "kitchen",
        "table",
        False,
        (0.0, 0.3),
        1.0,
        {"fruit": 0.7, "vegetable": 0.6, "kitchenware": 0.65, "insect": 0.1},
        ("fruit", "vegetable", "kitchenware"),
    ),
)


@dataclass(frozen=True)
class Background:
    """A background photo (or part of one) for one role in one split.

    source: a path under the tuxpaint folder (`templates/x.jpg`), an absolute path, `skimage:<name>` for an
        image bundled with scikit-image, or `reflection` (water made of the scene's own sky photo, mirrored,
        darkened and rippled).
    box: the part of the photo to use, (x0, y0, x1, y1) as fractions.
    duotone: (dark RGB, light RGB) to colour a grayscale texture.
    """

    source: str
    role: str
    split: str
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    duotone: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None


GRASS_GREEN = ((25, 50, 15), (150, 195, 90))
TABLECLOTH_RED = ((165, 35, 35), (240, 235, 225))
CREAM_TILES = ((110, 95, 75), (240, 230, 205))

# Each photo in exactly one split; every split gets every role.
TUXPAINT_BACKGROUNDS: tuple[Background, ...] = (
    Background("templates/sun_behind_clouds.jpg", "sky", "train"),
    Background("templates/trees_at_dusk.jpg", "sky", "train"),
    Background("templates/sheep.jpg", "sky", "train", (0.0, 0.0, 1.0, 0.38)),
    Background("templates/sheep.jpg", "grass", "train", (0.0, 0.64, 1.0, 1.0)),
    Background("templates/mossy_log.jpg", "grass", "train"),
    Background("skimage:gravel", "road", "train"),
    Background("skimage:brick", "road", "train"),
    Background("templates/ocean_waves.jpg", "water", "train", (0.0, 0.15, 1.0, 1.0)),
    Background("reflection", "water", "train"),
    Background("skimage:coffee", "table", "train", (0.72, 0.0, 1.0, 0.6)),
    Background("skimage:brick", "table", "train", duotone=CREAM_TILES),
    Background("templates/trees_above.jpg", "sky", "validation"),
    Background("templates/lighthouse.jpg", "sky", "validation", (0.0, 0.0, 0.17, 0.6)),
    Background("skimage:grass", "grass", "validation", duotone=GRASS_GREEN),
    Background("templates/sun_behind_leaves.jpg", "grass", "validation"),
    Background("templates/rocks.jpg", "road", "validation"),
    Background("reflection", "water", "validation"),
    Background("templates/burnt_bark.jpg", "table", "validation"),
    Background("templates/redwoods_above.jpg", "sky", "test", (0.0, 0.0, 1.0, 0.6)),
    Background("templates/cliff.jpg", "sky", "test", (0.0, 0.0, 0.3, 0.22)),
    Background("templates/corn_maze.jpg", "grass", "test"),
    Background("templates/mudstone.jpg", "road", "test"),
    Background("templates/cliff.jpg", "road", "test", (0.1, 0.45, 1.0, 1.0)),
    Background("templates/ocean_splash.jpg", "water", "test"),
    Background("reflection", "water", "test"),
    Background("templates/mudstone.jpg", "table", "test"),
    Background("skimage:checkerboard", "table", "test", duotone=TABLECLOTH_RED),
)


@dataclass
class SplitLibrary:
    """What one split may use: cut-out files per class, backgrounds per role."""

    stamps: dict[str, list[str]]
    backgrounds: dict[str, list[Background]]


# ---------------------------------------------------------------------------------------------- sources


def curated_tuxpaint_stamps(tuxpaint_dir: str | os.PathLike = TUXPAINT_DIR) -> dict[str, list[str]]:
    """The curated tuxpaint classes as {class: [absolute file paths]}; a missing file raises."""
    root = Path(tuxpaint_dir) / "stamps"
    stamps = {name: [str(root / path) for path in paths] for name, paths in TUXPAINT_CLASSES.items()}
    missing = [path for paths in stamps.values() for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} tuxpaint stamp file(s) missing, e.g. {missing[0]} "
            "(install Debian's tuxpaint-stamps-default, or pass stamps_dir=root/<class>/*.png)"
        )
    return stamps


def folder_stamps(stamps_dir: str | os.PathLike) -> dict[str, list[str]]:
    """{class: [png and svg files]} from a folder `root/<class>/*.{png,svg}` (class names are the sub-folders)."""
    root = Path(stamps_dir)
    stamps = {
        sub.name: sorted(str(path) for path in sub.iterdir() if path.suffix.lower() in STAMP_SUFFIXES)
        for sub in sorted(root.iterdir())
        if sub.is_dir()
    }
    stamps = {name: files for name, files in stamps.items() if files}
    if not stamps:
        raise FileNotFoundError(f"{root}: no class sub-folder with cut-outs (expected root/<class>/*.png or *.svg)")
    return stamps


def folder_backgrounds(backgrounds_dir: str | os.PathLike, seed: int) -> list[Background]:
    """Backgrounds from `root/<role>/*.{jpg,jpeg,png}`, each role's files dealt to the splits (seeded).

    Each role needs at least 3 files (one per split). If there are sky photos, every split also gets
    reflection water.
    """
    root = Path(backgrounds_dir)
    backgrounds = []
    for role in ROLES:
        files = sorted(str(p) for p in (root / role).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            continue
        if len(files) < len(SPLITS):
            raise ValueError(f"{root / role}: {len(files)} file(s); at least 3 are needed (one per split)")
        order = np.random.default_rng([seed, zlib.crc32(role.encode())]).permutation(len(files))
        backgrounds += [Background(files[i], role, SPLITS[k % len(SPLITS)]) for k, i in enumerate(order)]
        if role == "sky":
            backgrounds += [Background("reflection", "water", split) for split in SPLITS]
    if not backgrounds:
        raise FileNotFoundError(f"{root}: no background images in any of the role folders {ROLES}")
    return backgrounds


def split_stamps(stamps: dict[str, list[str]], seed: int) -> dict[str, dict[str, list[str]]]:
    """Deal each class's cut-out files to train / validation / test (disjoint, seeded, at least one each).

    A file named `<name>_mirror.png` goes with `<name>.png` (it is the same instance flipped), and `<name>.svg`
    with `<name>.png` (the same drawing).
    """
    library = {split: {} for split in SPLITS}
    for name, files in stamps.items():
        groups: dict[str, list[str]] = {}
        for path in sorted(files):
            groups.setdefault(Path(path).stem.removesuffix("_mirror"), []).append(path)
        keys = sorted(groups)
        if len(keys) < len(SPLITS):
            raise ValueError(
                f"class {name!r} has {len(keys)} cut-out(s); at least 3 are needed so that train, validation "
                "and test get disjoint instances"
            )
        order = [keys[i] for i in np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(keys))]
        num_validation = max(1, round(VALIDATION_SHARE * len(keys)))
        num_test = max(1, round(TEST_SHARE * len(keys)))
        dealt = {
            "validation": order[:num_validation],
            "test": order[num_validation : num_validation + num_test],
            "train": order[num_validation + num_test :],
        }
        for split, split_keys in dealt.items():
            library[split][name] = [path for key in split_keys for path in groups[key]]
    return library


def scene_types_for(class_names: list[str]) -> tuple[SceneType, ...]:
    """The scene types that can be made with these classes, plus a "mixed" one for the classes they leave out.

    A scene type is made when one of its anchors is among the classes. Classes that no such scene type
    shows (your own classes, or known ones without their anchors) appear in "mixed" scenes, standing on
    any surface.
    """
    scenes = tuple(scene for scene in SCENE_TYPES if any(anchor in class_names for anchor in scene.anchors))
    shown = {name for scene in scenes for name in scene.classes}
    left_out = tuple(name for name in class_names if name not in shown)
    if left_out:
        probabilities = dict.fromkeys(left_out, 0.35)
        scenes += (SceneType("mixed", "any", False, (0.0, 0.3), 1.0, probabilities, left_out, free_placement=True),)
    return scenes


# ---------------------------------------------------------------------------------------------- images

_IMAGE_CACHE: dict[tuple, PILImage.Image] = {}


def rasterize_svg(path: str, width: int) -> PILImage.Image:
    """An SVG drawing rendered to RGBA at `width` pixels wide (CairoSVG)."""
    try:
        import cairosvg
    except (ImportError, OSError) as error:  # OSError: the package is there but libcairo2 is not
        raise ImportError(
            f"{path}: SVG cut-outs need CairoSVG and Debian's libcairo2 "
            "(pip install 'srn-hf[demo]'; apt-get install libcairo2)"
        ) from error
    try:
        png = cairosvg.svg2png(url=str(path), output_width=width)
    except Exception as error:  # CairoSVG raises parser errors of several kinds
        raise ValueError(f"{path}: not a readable SVG drawing ({error})") from error
    return PILImage.open(io.BytesIO(png))


def load_stamp(path: str, max_side: int) -> PILImage.Image:
    """An RGBA cut-out cropped to its opaque pixels, at most `max_side` pixels long (cached per process)."""
    key = ("stamp", path, max_side)
    if key not in _IMAGE_CACHE:
        if Path(path).suffix.lower() == ".svg":
            stamp = rasterize_svg(path, 2 * max_side).convert("RGBA")
        else:
            stamp = PILImage.open(path).convert("RGBA")
        box = stamp.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
        if box is None:
            raise ValueError(f"{path}: the cut-out has no opaque pixel")
        stamp = stamp.crop(box)
        stamp.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
        _IMAGE_CACHE[key] = stamp
    return _IMAGE_CACHE[key]


def load_background(background: Background, tuxpaint_dir: str) -> PILImage.Image:
    """The RGB background image (its box, coloured if duotone, at most BACKGROUND_MAX_SIDE long; cached)."""
    key = ("background", background.source, background.box, background.duotone, tuxpaint_dir)
    if key not in _IMAGE_CACHE:
        if background.source.startswith("skimage:"):
            import skimage.data

            pixels = np.asarray(getattr(skimage.data, background.source.split(":", 1)[1])())
            if pixels.dtype == bool:
                pixels = pixels.astype(np.uint8) * 255
            image = PILImage.fromarray(pixels.astype(np.uint8))
        else:
            image = PILImage.open(Path(tuxpaint_dir) / background.source)
        if background.duotone is not None:
            gray = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255
            dark, light = (np.asarray(color, dtype=np.float32) for color in background.duotone)
            image = PILImage.fromarray((dark + (light - dark) * gray).astype(np.uint8))
        image = image.convert("RGB")
        x0, y0, x1, y1 = background.box
        image = image.crop(
            (round(x0 * image.width), round(y0 * image.height), round(x1 * image.width), round(y1 * image.height))
        )
        image.thumbnail((BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE), PILImage.Resampling.LANCZOS)
        _IMAGE_CACHE[key] = image
    return _IMAGE_CACHE[key]


def crop_fill(rng: np.random.Generator, image: PILImage.Image, size: tuple[int, int]) -> PILImage.Image:
    """A random crop of `image` with the aspect of `size` (55-100% of the largest such crop), resized, maybe
    mirrored."""
    width, height = size
    scale = rng.uniform(0.55, 1.0)
    if image.width / image.height > width / height:
        crop_h = image.height * scale
        crop_w = crop_h * width / height
    else:
        crop_w = image.width * scale
        crop_h = crop_w * height / width
    x0, y0 = rng.uniform(0, image.width - crop_w), rng.uniform(0, image.height - crop_h)
    crop = image.resize(size, PILImage.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    return crop.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def reflection(rng: np.random.Generator, sky: PILImage.Image) -> PILImage.Image:
    """Water that mirrors a sky: flipped upside down, darkened towards blue-green, rippled more near the viewer."""
    pixels = np.asarray(sky.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM), dtype=np.float32)
    pixels = 0.55 * pixels + 0.45 * np.array([20, 55, 75], dtype=np.float32)
    height = pixels.shape[0]
    phase, frequency = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.9)
    for y in range(height):
        depth = (y + 1) / height
        shift = int(round((1 + 6 * depth) * np.sin(phase + y * frequency / (0.3 + depth))))
        pixels[y] = np.roll(pixels[y], shift, axis=0) * (0.9 + 0.1 * np.cos(phase + y * 1.7))
    return PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def compose_background(
    rng: np.random.Generator, library: SplitLibrary, scene: SceneType, horizon: float, size: int, tuxpaint_dir: str
) -> tuple[PILImage.Image, str, list[str]]:
    """The scene's background: sky above the horizon (if the scene has sky) over its surface.

    Returns the RGB image, the surface role used and the background sources.
    """
    roles = [role for role in ROLES if role != "sky" and library.backgrounds.get(role)]
    surface = scene.surface if scene.surface != "any" else roles[rng.integers(len(roles))]
    candidates = library.backgrounds[surface]
    ground = candidates[rng.integers(len(candidates))]
    skies = library.backgrounds["sky"]
    sky = skies[rng.integers(len(skies))] if scene.sky or ground.source == "reflection" else None
    sky_image = load_background(sky, tuxpaint_dir) if sky is not None else None

    def surface_image(ground_size: tuple[int, int]) -> PILImage.Image:
        if ground.source == "reflection":
            return reflection(rng, crop_fill(rng, sky_image, ground_size))
        return crop_fill(rng, load_background(ground, tuxpaint_dir), ground_size)

    sources = [source.source for source in (sky, ground) if source is not None]
    if not scene.sky:
        return surface_image((size, size)), surface, sources
    horizon_y, blend = round(horizon * size), max(2, size // 40)
    canvas = crop_fill(rng, sky_image, (size, horizon_y + blend))
    canvas = canvas.crop((0, 0, size, size))  # extend downwards; the surface covers the rest
    ground_size = (size, size - horizon_y + blend)
    ground_image = surface_image(ground_size)
    ramp = np.clip(np.arange(ground_size[1], dtype=np.float32) / (2 * blend), 0, 1) * 255
    mask = PILImage.fromarray(np.repeat(ramp[:, None], size, axis=1).astype(np.uint8))
    canvas.paste(ground_image, (0, horizon_y - blend), mask)
    return canvas, surface, sources


# ---------------------------------------------------------------------------------------------- scenes


@dataclass
class PlacedObject:
    """One cut-out to paste: class, file, box (left, top, width, height in pixels), mirrored, paint order."""

    name: str
    path: str
    box: tuple[float, float, float, float]
    mirrored: bool
    order: float
    shadow: bool


def draw_present_classes(rng: np.random.Generator, library: SplitLibrary, scene: SceneType, surface: str) -> list[str]:
    """The classes of one scene, sky things first and things sitting near others last.

    Each of the scene type's classes appears with its probability; one anchor is added if none was drawn; with
    probability `VISITOR_PROBABILITY`, one more class that fits here (often of another scene type) visits. A
    class that cannot be in this scene (sky things without sky, a surface it does not stand on, `near` without
    its hosts) is left out.
    """
    available = [name for name in scene.classes if library.stamps.get(name)]
    present = [name for name in available if rng.random() < scene.classes[name]]
    anchors = [name for name in scene.anchors if library.stamps.get(name)]
    if not any(name in anchors for name in present):
        present.append(anchors[rng.integers(len(anchors))])

    def fits(name: str) -> bool:
        rule = scene.rule(name)
        if rule.place == "sky":
            return scene.sky
        if rule.place == "near":
            return any(other in present for other in rule.near)
        return not rule.surfaces or surface in rule.surfaces

    if rng.random() < VISITOR_PROBABILITY:
        visitors = [name for name in sorted(library.stamps) if name not in present and fits(name)]
        if visitors:
            present.append(visitors[rng.integers(len(visitors))])
    present = [name for name in present if fits(name)]
    rank = {"sky": 0, "surface": 1, "near": 2}
    present.sort(key=lambda name: rank[scene.rule(name).place])
    return present


def plan_objects(
    rng: np.random.Generator,
    library: SplitLibrary,
    scene: SceneType,
    surface: str,
    horizon: float,
    size: int,
) -> list[PlacedObject]:
    """Draw which classes appear (`draw_present_classes`) and where each instance stands."""
    present = draw_present_classes(rng, library, scene, surface)
    placed: list[PlacedObject] = []
    for name in present:
        rule = scene.rule(name)
        files = library.stamps[name]
        for _ in range(1 + rng.binomial(rule.max_count - 1, 0.35)):
            path = files[rng.integers(len(files))]
            stamp = load_stamp(path, 2 * size)
            longest = rng.uniform(*rule.size) * size
            if rule.place == "sky":
                center_x, center_y = rng.uniform(0, size), rng.uniform(0.05, max(0.06, horizon - 0.1)) * size
                order, shadow = 0.0, False
            elif rule.place == "surface":
                bottom = rng.uniform(horizon + 0.12 * (1 - horizon), 1.08)
                depth = 0.4 + 0.6 * (bottom - horizon) / (1 - horizon)
                longest *= depth
                order, shadow = 1.0 + bottom, True
            else:
                hosts = [obj for obj in placed if obj.name in rule.near]
                host = hosts[rng.integers(len(hosts))]
                left, top, width, height = host.box
                longest *= max(width, height) / (0.35 * size)
                center_x = left + width * rng.uniform(0.2, 0.8)
                center_y = top + height * rng.uniform(0.0, 0.5)
                order, shadow = 10.0, False
            longest = min(longest, 1.2 * size)
            scale = longest / max(stamp.width, stamp.height)
            width, height = max(2.0, stamp.width * scale), max(2.0, stamp.height * scale)
            if rule.place == "surface":
                center_x, center_y = rng.uniform(0, size), bottom * size - height / 2
            box = (center_x - width / 2, center_y - height / 2, width, height)
            placed.append(PlacedObject(name, path, box, bool(rng.random() < 0.5), order, shadow))
    return placed


def paste_shadow(canvas: PILImage.Image, ellipse: tuple[float, float, float, float], height: float) -> None:
    """Darken the canvas under a standing object: `ellipse` filled at 110, blurred by `height` / 30, pasted black.

    Drawn and blurred on the ellipse's region plus the blur's reach (PIL's GaussianBlur is three box blurs, each
    reaching at most its radius + 1 pixels) instead of the whole canvas: the same pixels for a fraction of the work.
    """
    radius = max(1.0, height / 30)
    reach = 3 * (int(radius) + 1) + 2
    left, top = max(0, math.floor(ellipse[0]) - reach), max(0, math.floor(ellipse[1]) - reach)
    right = min(canvas.width, math.ceil(ellipse[2]) + reach + 1)
    bottom = min(canvas.height, math.ceil(ellipse[3]) + reach + 1)
    if right <= left or bottom <= top:
        return  # entirely outside the canvas
    shadow = PILImage.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(shadow).ellipse((ellipse[0] - left, ellipse[1] - top, ellipse[2] - left, ellipse[3] - top), fill=110)
    canvas.paste((0, 0, 0), (left, top, right, bottom), shadow.filter(ImageFilter.GaussianBlur(radius)))


def paste_objects(
    rng: np.random.Generator, canvas: PILImage.Image, placed: list[PlacedObject], size: int
) -> list[tuple[PlacedObject, float, tuple[int, int, int, int] | None]]:
    """Paste far to near; return each object with its visible fraction and the box of its visible pixels."""
    owner = np.full((size, size), -1, dtype=np.int32)
    drawn = sorted(placed, key=lambda obj: obj.order)
    opaque_counts, regions = [], []
    for index, obj in enumerate(drawn):
        left, top, width, height = obj.box
        stamp = load_stamp(obj.path, 2 * size).resize((round(width), round(height)), PILImage.Resampling.BILINEAR)
        if obj.mirrored:
            stamp = stamp.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(stamp, dtype=np.float32)
        pixels[..., :3] *= rng.uniform(0.85, 1.15)  # lighting
        stamp = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGBA")
        x, y = round(left), round(top)
        if obj.shadow:
            paste_shadow(canvas, (x + 0.1 * width, y + 0.93 * height, x + 0.9 * width, y + 1.04 * height), height)
        canvas.paste(stamp, (x, y), stamp)
        opaque = np.asarray(stamp.getchannel("A")) > 127
        opaque_counts.append(int(opaque.sum()))
        ys, xs = np.nonzero(opaque)
        ys, xs = ys + y, xs + x
        inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        owner[ys[inside], xs[inside]] = index
        regions.append((max(y, 0), max(x, 0), y + stamp.height, x + stamp.width))  # where its pixels can be
    results = []
    for index, obj in enumerate(drawn):
        top, left, bottom, right = regions[index]
        ys, xs = np.nonzero(owner[top:bottom, left:right] == index)
        ys, xs = ys + top, xs + left
        visible = len(ys) / max(opaque_counts[index], 1)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(ys) else None
        results.append((obj, visible, box))
    return results


def render_scene(
    rng: np.random.Generator,
    library: SplitLibrary,
    scene_types: tuple[SceneType, ...],
    class_names: list[str],
    image_size: int,
    min_visible: float,
    tuxpaint_dir: str,
    stamps_root: str,
) -> dict:
    """One scene as a dataset row: JPEG image, labels, boxes, scene type, background sources."""
    weights = np.array([scene.weight for scene in scene_types])
    scene = scene_types[rng.choice(len(scene_types), p=weights / weights.sum())]
    horizon = rng.uniform(*scene.horizon)
    canvas, surface, backgrounds = compose_background(rng, library, scene, horizon, image_size, tuxpaint_dir)
    placed = plan_objects(rng, library, scene, surface, horizon, image_size)
    results = paste_objects(rng, canvas, placed, image_size)
    labels = sorted({class_names.index(obj.name) for obj, visible, _ in results if visible >= min_visible})
    boxes = [
        {
            "label": class_names.index(obj.name),
            "bbox": list(box),
            "visible_fraction": round(visible, 4),
            "stamp": os.path.relpath(obj.path, stamps_root),
        }
        for obj, visible, box in results
        if box is not None
    ]
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return {
        "image": {"bytes": buffer.getvalue(), "path": None},
        "labels": labels,
        "boxes": boxes,
        "scene": scene.name,
        "backgrounds": backgrounds,
    }


# ---------------------------------------------------------------------------------------------- dataset

_WORKER_STATE: dict = {}


def init_worker(state: dict) -> None:
    """Pool initializer: the libraries and settings every render task reads."""
    _WORKER_STATE.update(state)


def render_task(task: tuple[int, int]) -> dict:
    """Render image `index` of split number `split_number` with its own seed (worker-count independent)."""
    split_number, index = task
    state = _WORKER_STATE
    rng = np.random.default_rng([state["seed"], split_number, index])
    row = render_scene(
        rng,
        state["libraries"][SPLITS[split_number]],
        state["scene_types"],
        state["class_names"],
        state["image_size"],
        state["min_visible"],
        state["tuxpaint_dir"],
        state["stamps_root"],
    )
    row["image_id"] = f"{SPLITS[split_number]}-{index:05d}"
    return row


def stamp_scene_features(class_names: list[str]) -> Features:
    """The features of a stamp-scene split: the loaders' image / labels / image_id, plus boxes and provenance."""
    return Features(
        {
            **multilabel_features(class_names),
            "boxes": List(
                {
                    "label": ClassLabel(names=class_names),
                    "bbox": List(Value("float32"), length=4),
                    "visible_fraction": Value("float32"),
                    "stamp": Value("string"),
                }
            ),
            "scene": Value("string"),
            "backgrounds": List(Value("string")),
        }
    )


def split_libraries(
    stamps: dict[str, list[str]], background_list: list[Background], seed: int
) -> dict[str, SplitLibrary]:
    """Deal the cut-outs and backgrounds to the splits: {split: what that split may use}.

    Raises:
        ValueError: if a split has no background at all.
    """
    stamps_by_split = split_stamps(stamps, seed)
    libraries = {
        split: SplitLibrary(
            stamps_by_split[split],
            {role: [b for b in background_list if b.split == split and b.role == role] for role in ROLES},
        )
        for split in SPLITS
    }
    for split, library in libraries.items():
        if not any(library.backgrounds.values()):
            raise ValueError(f"no background for the {split} split")
    return libraries


def check_scene_backgrounds(scene_types: tuple[SceneType, ...], libraries: dict[str, SplitLibrary]) -> None:
    """Raise a ValueError naming the scene type and split if a split lacks the sky or surface a scene type needs."""
    for scene in scene_types:
        for split, library in libraries.items():
            needed = (["sky"] if scene.sky else []) + ([scene.surface] if scene.surface != "any" else [])
            missing = [role for role in needed if not library.backgrounds[role]]
            if missing:
                raise ValueError(f"scene type {scene.name!r} needs {missing} backgrounds in the {split} split")


def render_all(state: dict, sizes: tuple[int, int, int], num_workers: int | None, progress: bool) -> list[dict]:
    """Render every image of the splits, in split order, on `num_workers` processes (default: all CPUs)."""
    tasks = [(number, index) for number, count in enumerate(sizes) for index in range(count)]
    num_workers = num_workers or os.cpu_count() or 1
    if num_workers > 1:
        with multiprocessing.Pool(num_workers, initializer=init_worker, initargs=(state,)) as pool:
            rendered = pool.imap(render_task, tasks, chunksize=8)
            return list(tqdm(rendered, total=len(tasks), desc="stamp scenes", unit="image", disable=not progress))
    init_worker(state)
    return [render_task(task) for task in tqdm(tasks, desc="stamp scenes", unit="image", disable=not progress)]


def rows_to_dataset(rows: list[dict], sizes: tuple[int, int, int], class_names: list[str]) -> DatasetDict:
    """The rendered rows (train, then validation, then test) as a DatasetDict of `stamp_scene_features`."""
    features = stamp_scene_features(class_names)
    splits, start = {}, 0
    for split, count in zip(SPLITS, sizes):
        split_rows = rows[start : start + count]
        start += count
        splits[split] = Dataset.from_dict(
            {name: [row[name] for row in split_rows] for name in features}, features=features
        )
    return DatasetDict(splits)


def generate_stamp_scenes(
    output_dir: str | os.PathLike | None,
    stamps_dir: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    sizes: tuple[int, int, int] = DEFAULT_SIZES,
    image_size: int = 224,
    seed: int = 0,
    min_visible: float = 0.4,
    num_workers: int | None = None,
    tuxpaint_dir: str | os.PathLike = TUXPAINT_DIR,
    progress: bool = True,
) -> DatasetDict:
    """Generate the stamp-scene DatasetDict (train / validation / test) and save it to `output_dir`.

    Args:
        output_dir: where `save_to_disk` writes (plus `contact_sheet.png`); None to only return it.
        stamps_dir: a folder `root/<class>/*.{png,svg}` of cut-outs; None for the curated tuxpaint classes.
        backgrounds: a folder `root/<role>/*` (roles sky, grass, road, water, table); None for the curated
            tuxpaint and scikit-image photos.
        sizes: number of train, validation and test images.
        image_size: side of the square images.
        seed: seeds the instance split and every image.
        min_visible: the visible fraction of an object's opaque pixels needed for its label.
        num_workers: processes (default: all CPUs); the result does not depend on it.
        tuxpaint_dir: where tuxpaint's `stamps/` and `templates/` are.
        progress: show a tqdm bar.
    """
    tuxpaint_dir = str(tuxpaint_dir)
    if stamps_dir is None:
        stamps, stamps_root = curated_tuxpaint_stamps(tuxpaint_dir), str(Path(tuxpaint_dir) / "stamps")
    else:
        stamps, stamps_root = folder_stamps(stamps_dir), str(stamps_dir)
    if backgrounds is None:
        background_list = list(TUXPAINT_BACKGROUNDS)
    else:
        background_list = folder_backgrounds(backgrounds, seed)
    libraries = split_libraries(stamps, background_list, seed)
    class_names = sorted(stamps)
    scene_types = scene_types_for(class_names)
    check_scene_backgrounds(scene_types, libraries)

    state = {
        "seed": seed,
        "libraries": libraries,
        "scene_types": scene_types,
        "class_names": class_names,
        "image_size": image_size,
        "min_visible": min_visible,
        "tuxpaint_dir": tuxpaint_dir,
        "stamps_root": stamps_root,
    }
    rows = render_all(state, sizes, num_workers, progress)
    dataset = rows_to_dataset(rows, sizes, class_names)
    if output_dir is not None:
        dataset.save_to_disk(str(output_dir))
        contact_sheet(dataset["train"], Path(output_dir) / "contact_sheet.png")
    return dataset


def load_stamp_scenes(path: str | os.PathLike, generate: bool = False, **generator_options) -> DatasetDict:
    """The stamp scenes saved at `path`.

    With `generate=True` they are generated there first when `path` does not hold them yet (options of
    `generate_stamp_scenes`), into an absent or empty folder only. Without it, a `path` that holds no scenes (a typo)
    raises `FileNotFoundError` naming it: generating a dataset is asked for, never the side effect of a wrong path.
    """
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    if not generate:
        raise FileNotFoundError(
            f"{path} holds no stamp scenes (no dataset_dict.json): pass the folder they were generated into, or "
            f"generate them there with `python -m srn_hf.data.stamp_scenes {path}` or the option generate=true"
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} is not an empty folder and holds no stamp scenes: generate them elsewhere")
    return generate_stamp_scenes(path, **generator_options)


def contact_sheet(dataset: Dataset, path: str | os.PathLike, count: int = 24, columns: int = 6) -> Path:
    """Save a grid of the first `count` images with their label names written under each."""
    names = label_names(dataset)
    rows = dataset.select(range(min(count, len(dataset))))
    cell = rows[0]["image"].width if len(rows) else 224
    font = ImageFont.load_default(size=max(10, cell // 16))
    line_height = max(12, cell // 14)
    text_height = 3 * line_height + 4
    grid_rows = (len(rows) + columns - 1) // columns
    sheet = PILImage.new("RGB", (columns * cell, grid_rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        sheet.paste(row["image"].convert("RGB").resize((cell, cell)), (x, y))
        words = [names[label] for label in row["labels"]] or ["(no label)"]
        lines, line = [], ""
        for word in words:
            candidate = f"{line}, {word}" if line else word
            if draw.textlength(candidate, font=font) > cell - 6 and line:
                lines.append(line + ",")
                candidate = word
            line = candidate
        lines.append(line)
        for k, text in enumerate(lines[:3]):
            draw.text((x + 3, y + cell + 2 + k * line_height), text, fill="black", font=font)
    path = Path(path)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m srn_hf.data.stamp_scenes OUTPUT_DIR`: generate, save, write the contact sheet, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--stamps-dir", default=None, help="root/<class>/*.png cut-outs (default: tuxpaint)")
    parser.add_argument("--backgrounds", default=None, help="root/<role>/* photos (default: tuxpaint, skimage)")
    parser.add_argument("--sizes", type=int, nargs=3, default=DEFAULT_SIZES, metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-visible", type=float, default=0.4)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--tuxpaint-dir", default=str(TUXPAINT_DIR))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dataset = generate_stamp_scenes(
        args.output_dir,
        stamps_dir=args.stamps_dir,
        backgrounds=args.backgrounds,
        sizes=tuple(args.sizes),
        image_size=args.image_size,
        seed=args.seed,
        min_visible=args.min_visible,
        num_workers=args.workers,
        tuxpaint_dir=args.tuxpaint_dir,
    )
    seconds = time.perf_counter() - start
    print(dataset)
    print(f"classes: {dataset['train'].features['labels'].feature.names}")
    print(f"saved to {args.output_dir} (contact_sheet.png beside it) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
