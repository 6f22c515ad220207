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

Variants (`VARIANTS`): the demo's tables above are one dataset; `street-sky` and `tabletop` are others for
comparisons, fixed before any recipe is tuned on them (other labels drawn from the stamps, scene types, placement
and occlusion rules, image size, 2000 / 500 / 3000 images): tables read by the same generator. Their seeded
generations' fingerprints (`fingerprint`) are recorded in benchmarks/datasets.json.

    python -m srn_hf.data.stamp_scenes OUTPUT_DIR [--variant demo] [--sizes 1600 400 2000] [--image-size 224] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_from_disk
from datasets import Image as DatasetImage
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

from ..report import write_json
from ..storage import read_json_file
from .common import SPLITS, label_names, multilabel_features

TUXPAINT_DIR = Path("/usr/share/tuxpaint")  # Debian's tuxpaint-stamps-default and tuxpaint-data
VALIDATION_SHARE = TEST_SHARE = 0.2  # of each class's cut-out files
ROLES = ("sky", "grass", "road", "water", "table")
VISITOR_PROBABILITY = 0.15
BACKGROUND_MAX_SIDE = 640
SETTINGS_FILE = "stamp_scenes.json"  # beside the saved scenes: variant, settings, fingerprints
# The version of what the generator draws: bump it with every change that alters the images or labels of a seed (the
# fingerprints in benchmarks/datasets.json then change with it).
GENERATOR_VERSION = 1
PLACEMENT_ATTEMPTS = 20  # places drawn for an object before it is left out (`max_overlap`)
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

    place: `"sky"` (above the horizon), `"surface"` (standing on the scene's surface, perspective-scaled),
        `"horizon"` (standing far away, on the horizon line, behind everything that stands nearer), `"row"` (the
        first instance stands like a surface thing, the others side by side with it at the same depth, like the
        cars of a train), `"cluster"` (the others stand around the first, overlapping, like a group of people or a
        pile of coins) or `"near"` (sitting on an object of one of the `near` classes). In a scene seen from above
        (`SceneType.view == "top"`) there is no horizon: surface and horizon things lie anywhere, rows run along
        the first instance, clusters pile on it.
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
    free_placement: place every class by the default rule (standing on any surface), ignoring the rules.
    view: `"side"` (a photo taken standing: perspective, shadows) or `"top"` (seen from above: things lie anywhere
        on the surface at their size, turned any way, without shadow).
    rules: how each class is placed (`ClassRule`), the variant's; set by `scene_types_for`.
    """

    name: str
    surface: str
    sky: bool
    horizon: tuple[float, float]
    weight: float
    classes: dict[str, float] = field(default_factory=dict)
    anchors: tuple[str, ...] = ()
    free_placement: bool = False
    view: str = "side"
    rules: dict[str, ClassRule] = field(default_factory=dict)

    def rule(self, name: str) -> ClassRule:
        """How class `name` is placed in this scene."""
        return ClassRule() if self.free_placement else self.rules.get(name, ClassRule())


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


# ---------------------------------------------------------------------------------------------- variants
# Other datasets for comparisons, fixed before any recipe is tuned on them (docs/data.md, "Datasets for
# comparisons"): other labels drawn from the tuxpaint stamps, other scene types and co-occurrence, other placement
# and occlusion rules, another image size. Each is a table read by the one generator below.

STREET_CLASSES: dict[str, tuple[str, ...]] = {
    "bin": (
        "household/garbagecan.png",
        "household/home_compost_bin.png",
        "household/recyclingbox.svg",
        "household/recyclingbox2.svg",
        "household/trash_can.svg",
        "household/wheelie_bin.png",
    ),
    "building": tuple(
        f"town/houses/cartoon/{name}.png"
        for name in (
            "blacksmith",
            "cathedral",
            "cityhouse",
            "fishery",
            "fort",
            "fortress",
            "inn",
            "jailhouse",
            "monastery",
            "pinkhome",
            "stables",
            "swisshome",
            "tavern",
            "tower_round",
            "tower_square",
            "townhall",
            "university",
            "warehouse",
            "windmill",
            "wooden_cottage",
        )
    ),
    "bus": (
        "vehicles/iso_bus.svg",
        "vehicles/masstransit/green_korean_bus.png",
        "vehicles/masstransit/cartoon/double_decker_bus.png",
        "vehicles/masstransit/cartoon/schoolbus.svg",
    ),
    "car": (
        *TUXPAINT_CLASSES["car"],
        "vehicles/emergency/sedan_police.png",
        "vehicles/emergency/sedan_police_mirror.png",
    ),
    "cycle": ("vehicles/cycle/bluebike.svg", "vehicles/cycle/motorbike.svg", "vehicles/cycle/pink_tricycle.png"),
    "dog/cat": (
        "animals/mammals/dogs/dog.png",
        "animals/mammals/dogs/dingo.png",
        "animals/mammals/cats/kitten.svg",
        "seasonal/halloween/blackcat.png",
    ),
    "flag": tuple(
        f"town/flags/{name}.png"
        for name in ("blue-and-yellowflag", "checkeredflag", "greenflag", "redflag", "whiteflag", "yellowflag")
    ),
    "moon/sun": (
        "space/moon/moon_3qt.png",
        "space/moon/moon_crescent.png",
        "space/moon/moon_full.png",
        "space/planets/0_sun.png",
    ),
    "person": (
        "people/fireman240a.png",
        *(
            f"people/cartoon/{name}.svg"
            for name in (
                "girl_in_wheelchair",
                "man_in_suit",
                "woman_chemist",
                "woman_dancing",
                "woman_doctor",
                "woman_nurse",
                "woman_police_officer_1",
                "woman_police_officer_2",
            )
        ),
    ),
    "rail car": (
        "vehicles/locomotive/white_train.svg",
        *(
            f"vehicles/locomotive/cartoon/{name}.png"
            for name in ("boxcar", "caboose", "carriage", "tanker", "tender", "tender_mirror", "toy_train")
        ),
    ),
    "road sign": tuple(
        f"town/roadsigns/{name}"
        for name in (
            "arrow.png",
            "blankroadsign.svg",
            "crossroads.png",
            "dead_end_sign.png",
            "give_way_sign.png",
            "hospital.png",
            "no_entry_sign.png",
            "no_uturn.png",
            "railroad_crossing.png",
            "roundabout.png",
            "school_sign.png",
            "stop.png",
            "t-junction.png",
            "toilets.png",
            "xing_ped.png",
            "xing_school.png",
            "xing_school_mirror.png",
            "yield.png",
        )
    ),
    "tree": (
        "plants/trees/birch.png",
        "plants/trees/holm_oak.png",
        "plants/trees/liberia-palm.png",
        "plants/trees/tree336.png",
        "seasonal/christmas/tree.png",
    ),
}

# Buildings stand far off on the horizon, rail cars and flags in rows, people in groups; the moon or sun high in
# a sky band.
STREET_RULES: dict[str, ClassRule] = {
    "bin": ClassRule("surface", ("road", "grass"), (0.14, 0.22), 2),
    "building": ClassRule("horizon", (), (0.45, 0.7), 3),
    "bus": ClassRule("surface", ("road",), (0.5, 0.7), 1),
    "car": ClassRule("surface", ("road",), (0.32, 0.45), 3),
    "cycle": ClassRule("surface", ("road", "grass"), (0.2, 0.3), 2),
    "dog/cat": ClassRule("surface", ("road", "grass"), (0.14, 0.22), 2),
    "flag": ClassRule("row", ("road", "grass"), (0.2, 0.3), 5),
    "moon/sun": ClassRule("sky", size=(0.1, 0.16), max_count=1),
    "person": ClassRule("cluster", (), (0.3, 0.42), 5),
    "rail car": ClassRule("row", ("road", "grass"), (0.35, 0.5), 5),
    "road sign": ClassRule("surface", ("road", "grass"), (0.14, 0.22), 2),
    "tree": ClassRule("surface", ("grass", "road"), (0.4, 0.65), 3),
}

STREET_SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType(
        "street",
        "road",
        True,
        (0.35, 0.55),
        1.0,
        {
            "building": 0.75,
            "car": 0.7,
            "person": 0.55,
            "bus": 0.3,
            "cycle": 0.3,
            "road sign": 0.45,
            "bin": 0.35,
            "tree": 0.25,
            "dog/cat": 0.15,
            "moon/sun": 0.15,
        },
        ("car", "bus", "person"),
    ),
    SceneType(
        "railway",
        "road",
        True,
        (0.4, 0.6),
        0.7,
        {"rail car": 0.95, "road sign": 0.35, "tree": 0.4, "building": 0.35, "moon/sun": 0.2},
        ("rail car",),
    ),
    SceneType(
        "park",
        "grass",
        True,
        (0.25, 0.45),
        0.9,
        {"tree": 0.85, "person": 0.6, "dog/cat": 0.55, "cycle": 0.3, "bin": 0.3, "flag": 0.15, "moon/sun": 0.2},
        ("tree", "dog/cat"),
    ),
    SceneType(
        "parade",
        "road",
        True,
        (0.3, 0.5),
        0.5,
        {"flag": 0.9, "person": 0.85, "building": 0.6, "bus": 0.2, "moon/sun": 0.1},
        ("flag",),
    ),
)

TABLETOP_CLASSES: dict[str, tuple[str, ...]] = {
    "baked goods": (
        "food/bread.svg",
        "food/pizza.png",
        "food/dessert/cartoon/birthday_cake.png",
        "food/dessert/cartoon/pink_cake.png",
        "seasonal/christmas/Christmas_pudding.png",
        "seasonal/christmas/Mince_Pie.png",
    ),
    "ball": tuple(
        f"sports/{name}.png"
        for name in ("australian_rules_football", "basketball", "cricketball", "football", "soccer", "tennis_ball")
    )
    + ("sports/cartoon/volleyball.png",),
    "camera": (
        "household/electronics/DSLR_Camera.svg",
        "household/electronics/camera.svg",
        "household/electronics/digitalcamera.svg",
        "hobbies/camera_35mm.png",
    ),
    "candy": (
        "seasonal/christmas/Candy_cane_photo_1.png",
        "seasonal/christmas/Candy_cane_photo_2.png",
        "seasonal/christmas/candy_cane.png",
        "seasonal/christmas/hard_candy.png",
        "seasonal/easter/wrapped_chocolate_easter_egg.png",
        "seasonal/easter/wrapped_chocolate_easter_egg_2.png",
    ),
    # One colour of each piece: a white and a black king are one design, kept in one split.
    "chess piece": tuple(
        f"symbols/chess/{name}.png"
        for name in ("b_1_king", "w_2_queen", "b_3_bishop", "w_4_knight", "b_5_rook", "w_6_pawn")
    ),
    "coin": (
        *(
            f"symbols/money/canadian/coins/{name}.png"
            for name in ("001penny", "005nickel", "010dime", "025quarter", "100loonie", "200toonie")
        ),
        *(f"symbols/money/euro/coins/{name}.png" for name in ("001", "002", "005", "010", "020", "050", "100", "200")),
        *(
            f"symbols/money/japanese/{name}.png"
            for name in ("yen001", "yen005", "yen010", "yen050", "yen100", "yen500")
        ),
    ),
    "electronics": tuple(
        f"household/electronics/{name}.svg"
        for name in ("calculator", "compact_disc", "laptop", "mobile", "mouse", "phone")
    ),
    "glasses": (
        "clothes/glasses1.svg",
        "clothes/glasses2.svg",
        "clothes/sunglasses_01.svg",
        "clothes/sunglasses_02.svg",
    ),
    "hat": tuple(
        f"clothes/hats/{name}"
        for name in (
            "blue_fedora.png",
            "brownhat.svg",
            "cowboy_hat.svg",
            "crown1.svg",
            "elfhat.svg",
            "feathered_hat.png",
            "green_fedora.png",
            "greenhat.svg",
            "hardhat.svg",
            "mortarboard.svg",
            "propeller_hat.png",
            "purplehat.svg",
            "sombrero.png",
            "tophat.png",
            "wizardhat.svg",
        )
    ),
    "nut": tuple(f"food/nuts/{name}.png" for name in ("almond", "pecan", "walnut", "walnut_shelled")),
    "pen": (
        "household/arttools/Pencil.svg",
        "household/arttools/ballpointpen.svg",
        "household/arttools/biro.svg",
        "household/arttools/highlighter.png",
        "household/arttools/painttube.svg",
        "household/arttools/pen_dryerase.png",
        "household/arttools/pencil2.svg",
    ),
    "tool": (
        "household/tools/hammer.png",
        "household/tools/hammer2.svg",
        "household/tools/mallet_metal.png",
        "household/tools/measuring_tape.png",
        "household/tools/measuring_tape_mirror.png",
        "household/tools/paintbrush_large.png",
        "household/tools/plyers.png",
        "household/tools/saw.png",
        "household/tools/screwdriver.svg",
        "household/tools/wrench.png",
        "household/tools/wrench_adjustable.png",
        "household/tools/wrench_plumbers.png",
    ),
}

# Seen from above: everything lies anywhere on the table, turned any way; coins, nuts and candy in piles, chess
# pieces in rows. Piles hide much of what lies under them, so a label needs only a quarter of the object visible.
TABLETOP_RULES: dict[str, ClassRule] = {
    "baked goods": ClassRule("surface", (), (0.3, 0.45), 2),
    "ball": ClassRule("surface", (), (0.18, 0.28), 2),
    "camera": ClassRule("surface", (), (0.25, 0.35), 1),
    "candy": ClassRule("cluster", (), (0.15, 0.25), 4),
    "chess piece": ClassRule("row", (), (0.14, 0.2), 6),
    "coin": ClassRule("cluster", (), (0.1, 0.16), 8),
    "electronics": ClassRule("surface", (), (0.3, 0.45), 2),
    "glasses": ClassRule("surface", (), (0.25, 0.35), 1),
    "hat": ClassRule("surface", (), (0.3, 0.42), 2),
    "nut": ClassRule("cluster", (), (0.1, 0.15), 6),
    "pen": ClassRule("surface", (), (0.3, 0.45), 3),
    "tool": ClassRule("surface", (), (0.35, 0.55), 3),
}

TABLETOP_SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType(
        "workbench",
        "table",
        False,
        (0.0, 0.0),
        1.0,
        {"tool": 0.95, "pen": 0.4, "glasses": 0.2, "electronics": 0.15, "coin": 0.15},
        ("tool",),
        view="top",
    ),
    SceneType(
        "desk",
        "table",
        False,
        (0.0, 0.0),
        1.0,
        {"electronics": 0.7, "pen": 0.65, "glasses": 0.4, "camera": 0.35, "coin": 0.25, "candy": 0.1},
        ("electronics", "pen"),
        view="top",
    ),
    SceneType(
        "game table",
        "table",
        False,
        (0.0, 0.0),
        0.8,
        {"chess piece": 0.9, "coin": 0.5, "candy": 0.35, "nut": 0.25, "ball": 0.1},
        ("chess piece",),
        view="top",
    ),
    SceneType(
        "party table",
        "table",
        False,
        (0.0, 0.0),
        1.0,
        {"baked goods": 0.85, "candy": 0.6, "hat": 0.5, "nut": 0.4, "ball": 0.25, "camera": 0.15},
        ("baked goods",),
        view="top",
    ),
)


@dataclass(frozen=True)
class Variant:
    """A named stamp-scene dataset: its labels, scene types and rules, and the defaults it is generated with.

    classes: {label: stamp files under tuxpaint's stamps/}; rules: how each label is placed (`ClassRule`);
    scene_types: which labels appear together and on what; image_size, sizes (train / validation / test):
    the defaults of `generate_stamp_scenes`; min_visible: the visible fraction of an object's opaque pixels its
    label needs; max_overlap: the most of an object's box (or of the earlier object's) that a later object's box may
    cover, its place redrawn until it fits (None: any overlap).
    """

    name: str
    description: str
    classes: dict[str, tuple[str, ...]]
    rules: dict[str, ClassRule]
    scene_types: tuple[SceneType, ...]
    image_size: int
    sizes: tuple[int, int, int]
    min_visible: float
    max_overlap: float | None = None


COMPARISON_SIZES = (2000, 500, 3000)
VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            "demo",
            "farms, roads, harbours, airfields, gardens, kitchens seen standing; 13 labels",
            TUXPAINT_CLASSES,
            CLASS_RULES,
            SCENE_TYPES,
            224,
            DEFAULT_SIZES,
            0.4,
        ),
        Variant(
            "street-sky",
            "streets, railways, parks, parades under a sky band: buildings on the horizon, rows of rail cars and "
            "flags, groups of people, little overlap; 12 labels",
            STREET_CLASSES,
            STREET_RULES,
            STREET_SCENE_TYPES,
            256,
            COMPARISON_SIZES,
            0.6,
            max_overlap=0.3,
        ),
        Variant(
            "tabletop",
            "workbenches, desks, game and party tables seen from above: things turned any way, piles and rows, "
            "heavy occlusion; 12 labels",
            TABLETOP_CLASSES,
            TABLETOP_RULES,
            TABLETOP_SCENE_TYPES,
            160,
            COMPARISON_SIZES,
            0.25,
        ),
    )
}


@dataclass
class SplitLibrary:
    """What one split may use: cut-out files per class, backgrounds per role."""

    stamps: dict[str, list[str]]
    backgrounds: dict[str, list[Background]]


# ---------------------------------------------------------------------------------------------- sources


def curated_tuxpaint_stamps(
    tuxpaint_dir: str | os.PathLike = TUXPAINT_DIR, classes: dict[str, tuple[str, ...]] = TUXPAINT_CLASSES
) -> dict[str, list[str]]:
    """Curated tuxpaint classes (`classes`, a variant's: paths under stamps/) as {class: [absolute file paths]}; a
    missing file raises."""
    root = Path(tuxpaint_dir) / "stamps"
    stamps = {name: [str(root / path) for path in paths] for name, paths in classes.items()}
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


def scene_types_for(class_names: list[str], variant: Variant) -> tuple[SceneType, ...]:
    """The variant's scene types that can be made with these classes (with the variant's rules), plus a "mixed" one
    for the classes they leave out.

    A scene type is made when one of its anchors is among the classes. Classes that no such scene type
    shows (your own classes, or known ones without their anchors) appear in "mixed" scenes, standing on
    any surface.
    """
    scenes = tuple(
        dataclasses.replace(scene, rules=variant.rules)
        for scene in variant.scene_types
        if any(anchor in class_names for anchor in scene.anchors)
    )
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
    """One cut-out to paste: class, file, box (left, top, width, height in pixels, before turning), mirrored, paint
    order, shadow, and the angle it is turned by about its centre (degrees counter-clockwise)."""

    name: str
    path: str
    box: tuple[float, float, float, float]
    mirrored: bool
    order: float
    shadow: bool
    angle: float = 0.0


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
    rank = {"sky": 0, "horizon": 1, "surface": 1, "row": 1, "cluster": 1, "near": 2}
    present.sort(key=lambda name: rank[scene.rule(name).place])
    return present


def plan_objects(
    rng: np.random.Generator,
    library: SplitLibrary,
    scene: SceneType,
    surface: str,
    horizon: float,
    size: int,
    max_overlap: float | None = None,
) -> list[PlacedObject]:
    """Draw which classes appear (`draw_present_classes`) and where each instance goes (`place_object`).

    With `max_overlap`, an instance whose box overlaps an earlier one's by more than that (`box_overlap`) is placed
    again, up to `PLACEMENT_ATTEMPTS` times, and left out if it never fits.
    """
    present = draw_present_classes(rng, library, scene, surface)
    placed: list[PlacedObject] = []
    for name in present:
        rule = scene.rule(name)
        files = library.stamps[name]
        group: list[PlacedObject] = []  # this class's instances so far: a row or a cluster goes by them
        if rule.place == "near" and not any(obj.name in rule.near for obj in placed):
            continue  # every host was left out (`max_overlap`)
        for _ in range(1 + rng.binomial(rule.max_count - 1, 0.35)):
            path = files[rng.integers(len(files))]
            stamp = load_stamp(path, 2 * size)
            longest = rng.uniform(*rule.size) * size
            for _attempt in range(1 if max_overlap is None else PLACEMENT_ATTEMPTS):
                obj = place_object(rng, scene, name, path, stamp.size, longest, placed, group, horizon, size)
                if max_overlap is None or all(box_overlap(obj.box, other.box) <= max_overlap for other in placed):
                    placed.append(obj)
                    group.append(obj)
                    break
    return placed


def place_object(
    rng: np.random.Generator,
    scene: SceneType,
    name: str,
    path: str,
    stamp_size: tuple[int, int],
    longest: float,
    placed: list[PlacedObject],
    group: list[PlacedObject],
    horizon: float,
    size: int,
) -> PlacedObject:
    """Where one instance of `name` goes in a scene seen standing, by its rule's `place` (`ClassRule`); in a scene
    seen from above, `place_from_above`. `longest` is its longest side at the front of the scene."""
    rule = scene.rule(name)
    if scene.view == "top" and rule.place not in ("sky", "near"):
        return place_from_above(rng, rule, name, path, stamp_size, longest, group, size)
    standing = rule.place not in ("sky", "near")
    if rule.place == "sky":
        center_x, center_y = rng.uniform(0, size), rng.uniform(0.05, max(0.06, horizon - 0.1)) * size
        order, shadow = 0.0, False
    elif rule.place == "near":
        hosts = [obj for obj in placed if obj.name in rule.near]
        host = hosts[rng.integers(len(hosts))]
        left, top, width, height = host.box
        longest *= max(width, height) / (0.35 * size)
        center_x = left + width * rng.uniform(0.2, 0.8)
        center_y = top + height * rng.uniform(0.0, 0.5)
        order, shadow = 10.0, False
    else:
        bottom = standing_bottom(rng, rule.place, group, horizon, size)
        longest *= 0.4 + 0.6 * (bottom - horizon) / (1 - horizon)  # perspective: smaller farther off
        order, shadow = 1.0 + bottom, True
    longest = min(longest, 1.2 * size)
    scale = longest / max(stamp_size)
    width, height = max(2.0, stamp_size[0] * scale), max(2.0, stamp_size[1] * scale)
    if standing:
        center_x, center_y = standing_x(rng, rule.place, group, width, size), bottom * size - height / 2
    box = (center_x - width / 2, center_y - height / 2, width, height)
    return PlacedObject(name, path, box, bool(rng.random() < 0.5), order, shadow)


def standing_bottom(
    rng: np.random.Generator, place: str, group: list[PlacedObject], horizon: float, size: int
) -> float:
    """Where a standing thing's foot is, as a fraction of the image height: on the ground in front of the horizon
    (`surface`, and the first of a row or cluster), just below it (`horizon`), at the row's depth (`row`) or near the
    cluster's first (`cluster`)."""
    ground = 1 - horizon
    if place == "horizon":
        return rng.uniform(horizon + 0.02 * ground, horizon + 0.1 * ground)
    if place in ("row", "cluster") and group:
        first = group[0].box
        bottom = (first[1] + first[3]) / size
        return bottom if place == "row" else float(np.clip(bottom + rng.uniform(-0.08, 0.08) * ground, horizon, 1.08))
    return rng.uniform(horizon + 0.12 * ground, 1.08)


def standing_x(rng: np.random.Generator, place: str, group: list[PlacedObject], width: float, size: int) -> float:
    """The centre's x of a standing thing: anywhere, or beside the row's last (towards the wider side of the frame),
    or around the cluster's first."""
    if place == "row" and group:
        last, first = group[-1].box, group[0].box
        gap = rng.uniform(0.0, 0.08) * last[2]
        if first[0] + first[2] / 2 < size / 2:
            return last[0] + last[2] + gap + width / 2
        return last[0] - gap - width / 2
    if place == "cluster" and group:
        first = group[0].box
        return first[0] + first[2] / 2 + rng.uniform(-0.7, 0.7) * first[2]
    return rng.uniform(0, size)


def place_from_above(
    rng: np.random.Generator,
    rule: ClassRule,
    name: str,
    path: str,
    stamp_size: tuple[int, int],
    longest: float,
    group: list[PlacedObject],
    size: int,
) -> PlacedObject:
    """Where one instance lies in a scene seen from above: anywhere, turned any way; a row's next beside its last,
    unturned (pieces on a board); a cluster's next on and around its first (a pile)."""
    scale = min(longest, 1.2 * size) / max(stamp_size)
    width, height = max(2.0, stamp_size[0] * scale), max(2.0, stamp_size[1] * scale)
    angle = 0.0
    if rule.place == "row" and group:
        last = group[-1].box
        center_x = last[0] + last[2] + rng.uniform(0.05, 0.3) * width + width / 2
        center_y = last[1] + last[3] / 2
    elif rule.place == "row":
        center_x, center_y = rng.uniform(0.05, 0.5) * size, rng.uniform(0.15, 0.85) * size
    elif rule.place == "cluster" and group:
        first = group[0].box
        reach = max(first[2], first[3])
        center_x = first[0] + first[2] / 2 + rng.uniform(-0.6, 0.6) * reach
        center_y = first[1] + first[3] / 2 + rng.uniform(-0.6, 0.6) * reach
        angle = rng.uniform(-180, 180)
    else:
        center_x, center_y = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size
        angle = rng.uniform(-180, 180)
    box = (center_x - width / 2, center_y - height / 2, width, height)
    return PlacedObject(name, path, box, bool(rng.random() < 0.5), rng.uniform(1.0, 2.0), False, angle)


def box_overlap(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> float:
    """The area two (left, top, width, height) boxes share, as a fraction of the smaller one's area."""
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(first[2] * first[3], second[2] * second[3])


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
        if obj.angle:  # turned about the box's centre
            stamp = stamp.rotate(obj.angle, PILImage.Resampling.BILINEAR, expand=True)
            x, y = round(left + (width - stamp.width) / 2), round(top + (height - stamp.height) / 2)
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
    max_overlap: float | None = None,
) -> dict:
    """One scene as a dataset row: JPEG image, labels, boxes, scene type, background sources."""
    weights = np.array([scene.weight for scene in scene_types])
    scene = scene_types[rng.choice(len(scene_types), p=weights / weights.sum())]
    horizon = rng.uniform(*scene.horizon)
    canvas, surface, backgrounds = compose_background(rng, library, scene, horizon, image_size, tuxpaint_dir)
    placed = plan_objects(rng, library, scene, surface, horizon, image_size, max_overlap)
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
        state["max_overlap"],
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
    sizes: tuple[int, int, int] | None = None,
    image_size: int | None = None,
    seed: int = 0,
    min_visible: float | None = None,
    num_workers: int | None = None,
    tuxpaint_dir: str | os.PathLike = TUXPAINT_DIR,
    progress: bool = True,
    variant: str = "demo",
) -> DatasetDict:
    """Generate the stamp-scene DatasetDict (train / validation / test) and save it to `output_dir`.

    Args:
        output_dir: where `save_to_disk` writes (plus `contact_sheet.png` and `stamp_scenes.json`, what was
            generated: variant, settings, fingerprints); None to only return it.
        stamps_dir: a folder `root/<class>/*.{png,svg}` of cut-outs; None for the variant's curated tuxpaint classes.
        backgrounds: a folder `root/<role>/*` (roles sky, grass, road, water, table); None for the curated
            tuxpaint and scikit-image photos.
        sizes: number of train, validation and test images (default: the variant's).
        image_size: side of the square images (default: the variant's).
        seed: seeds the instance split and every image.
        min_visible: the visible fraction of an object's opaque pixels needed for its label (default: the
            variant's).
        num_workers: processes (default: all CPUs); the result does not depend on it.
        tuxpaint_dir: where tuxpaint's `stamps/` and `templates/` are.
        progress: show a tqdm bar.
        variant: a name of `VARIANTS`: labels, scene types, placement and occlusion rules, default sizes.
    """
    chosen = get_variant(variant)
    sizes = tuple(chosen.sizes if sizes is None else sizes)
    settings = {
        "variant": variant,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": list(sizes),
        "image_size": chosen.image_size if image_size is None else image_size,
        "min_visible": chosen.min_visible if min_visible is None else min_visible,
        "stamps": "tuxpaint" if stamps_dir is None else "folder",
        "backgrounds": "tuxpaint" if backgrounds is None else "folder",
    }
    tuxpaint_dir = str(tuxpaint_dir)
    if stamps_dir is None:
        stamps, stamps_root = curated_tuxpaint_stamps(tuxpaint_dir, chosen.classes), str(Path(tuxpaint_dir) / "stamps")
    else:
        stamps, stamps_root = folder_stamps(stamps_dir), str(stamps_dir)
    if backgrounds is None:
        background_list = list(TUXPAINT_BACKGROUNDS)
    else:
        background_list = folder_backgrounds(backgrounds, seed)
    libraries = split_libraries(stamps, background_list, seed)
    class_names = sorted(stamps)
    scene_types = scene_types_for(class_names, chosen)
    check_scene_backgrounds(scene_types, libraries)

    state = {
        "seed": seed,
        "libraries": libraries,
        "scene_types": scene_types,
        "class_names": class_names,
        "image_size": settings["image_size"],
        "min_visible": settings["min_visible"],
        "tuxpaint_dir": tuxpaint_dir,
        "stamps_root": stamps_root,
        "max_overlap": chosen.max_overlap,
    }
    rows = render_all(state, sizes, num_workers, progress)
    dataset = rows_to_dataset(rows, sizes, class_names)
    if output_dir is not None:
        dataset.save_to_disk(str(output_dir))
        contact_sheet(dataset["train"], Path(output_dir) / "contact_sheet.png")
        fingerprints = {split: fingerprint(data) for split, data in dataset.items()}
        write_json(Path(output_dir) / SETTINGS_FILE, {**settings, "labels": class_names, "fingerprints": fingerprints})
    return dataset


def get_variant(name: str) -> Variant:
    """The variant called `name`; a `ValueError` naming the known ones for another name."""
    if name not in VARIANTS:
        raise ValueError(f"variant={name!r} is not a stamp-scene variant; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def load_stamp_scenes(
    path: str | os.PathLike, generate: bool = False, variant: str | None = None, **generator_options
) -> DatasetDict:
    """The stamp scenes saved at `path`.

    With `generate=True` they are generated there first when `path` does not hold them yet (options of
    `generate_stamp_scenes`; `variant` default "demo"), into an absent or empty folder only. Without it, a `path`
    that holds no scenes (a typo) raises `FileNotFoundError` naming it: generating a dataset is asked for, never the
    side effect of a wrong path. Scenes already at `path` that were generated as another `variant` (or with another
    `seed`, `sizes`, `image_size`, `min_visible` than asked) raise a `ValueError` naming both: one folder per variant.
    """
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(path))
        check_saved_settings(path, dataset, {"variant": variant, **generator_options})
        return dataset
    if not generate:
        raise FileNotFoundError(
            f"{path} holds no stamp scenes (no dataset_dict.json): pass the folder they were generated into, or "
            f"generate them there with `python -m srn_hf.data.stamp_scenes {path}` or the option generate=true"
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} is not an empty folder and holds no stamp scenes: generate them elsewhere")
    return generate_stamp_scenes(path, variant=variant or "demo", **generator_options)


def check_saved_settings(path: Path, dataset: DatasetDict, asked: dict) -> None:
    """Raise a `ValueError` if the scenes saved at `path` were generated with other settings than `asked` (the
    ones given, not None). Scenes saved before `stamp_scenes.json` was written are the demo's if their labels are."""
    settings_file = path / SETTINGS_FILE
    if settings_file.is_file():
        saved = read_json_file(settings_file)
    else:
        saved = {"variant": "demo"} if label_names(dataset) == sorted(TUXPAINT_CLASSES) else {}
    for key in ("variant", "seed", "sizes", "image_size", "min_visible"):
        wanted = asked.get(key)
        wanted = list(wanted) if isinstance(wanted, tuple) else wanted
        if wanted is not None and key in saved and saved[key] != wanted:
            raise ValueError(
                f"{path} holds stamp scenes generated with {key}={saved[key]!r}, not {key}={wanted!r}: generate "
                f"those into another folder (path)"
            )


# ---------------------------------------------------------------------------------------------- fingerprints


def fingerprint(split: Dataset) -> str:
    """SHA-256 over a generated split's rows in order: each image's encoded bytes and its labels. The same seed and
    settings give the same fingerprint on every machine with the same packages (tuxpaint, Pillow, CairoSVG)."""
    digest = hashlib.sha256()
    raw = split.cast_column("image", DatasetImage(decode=False)).select_columns(["image", "labels"])
    for row in raw:
        digest.update(row["image"]["bytes"])
        digest.update(json.dumps(row["labels"]).encode())
    return digest.hexdigest()


def positives(split: Dataset) -> dict[str, int]:
    """{label: number of images where it is present}."""
    names = label_names(split)
    counts = np.bincount([label for labels in split["labels"] for label in labels], minlength=len(names))
    return {name: int(count) for name, count in zip(names, counts)}


def placement_statistics(split: Dataset) -> dict[str, float]:
    """How a split's objects are placed and occluded, from the pasted objects' boxes: objects and labels per image,
    the mean visible fraction, the share of objects less than 90 % visible, the mean height of a box's centre (0 top,
    1 bottom) and the mean box area, as fractions of the image."""
    boxes = [box for row in split["boxes"] for box in row]
    size = split[0]["image"].height if len(split) else 1
    centres = [(box["bbox"][1] + box["bbox"][3]) / 2 / size for box in boxes]
    areas = [(box["bbox"][2] - box["bbox"][0]) * (box["bbox"][3] - box["bbox"][1]) / size**2 for box in boxes]
    visible = [box["visible_fraction"] for box in boxes]
    images = max(len(split), 1)
    return {
        "objects_per_image": round(len(boxes) / images, 4),
        "labels_per_image": round(sum(len(labels) for labels in split["labels"]) / images, 4),
        "mean_visible_fraction": round(float(np.mean(visible)), 4) if boxes else 0.0,
        "occluded_share": round(float(np.mean(np.asarray(visible) < 0.9)), 4) if boxes else 0.0,
        "mean_centre_height": round(float(np.mean(centres)), 4) if boxes else 0.0,
        "mean_box_area": round(float(np.mean(areas)), 4) if boxes else 0.0,
    }


def describe_split(split: Dataset) -> dict:
    """A split's images, fingerprint, positives per label and placement statistics (what benchmarks/datasets.json
    records)."""
    return {
        "images": len(split),
        "fingerprint": fingerprint(split),
        "positives": positives(split),
        "placement": placement_statistics(split),
    }


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
    parser.add_argument(
        "--variant", default="demo", choices=sorted(VARIANTS), help="labels, scenes, rules (default: demo)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"), help="default: the variant's"
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: the variant's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-visible", type=float, default=None, help="default: the variant's")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--tuxpaint-dir", default=str(TUXPAINT_DIR))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dataset = generate_stamp_scenes(
        args.output_dir,
        stamps_dir=args.stamps_dir,
        backgrounds=args.backgrounds,
        sizes=args.sizes,
        image_size=args.image_size,
        seed=args.seed,
        min_visible=args.min_visible,
        num_workers=args.workers,
        tuxpaint_dir=args.tuxpaint_dir,
        variant=args.variant,
    )
    seconds = time.perf_counter() - start
    print(dataset)
    print(f"classes: {dataset['train'].features['labels'].feature.names}")
    print(f"saved to {args.output_dir} (contact_sheet.png beside it) in {seconds:.1f} s")


if __name__ == "__main__":
    main()
