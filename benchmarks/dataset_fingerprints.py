"""The datasets SRN is compared on, fixed before any recipe is tuned on them: the stamp-scene variants' seeded
generations and their fingerprints, recorded in benchmarks/datasets.json.

    python benchmarks/dataset_fingerprints.py --check          # generate every recorded variant again, compare
    python benchmarks/dataset_fingerprints.py --check --variants tabletop
    python benchmarks/dataset_fingerprints.py --write          # generate and record every variant (see below)

Each variant (`srn_hf.data.stamp_scenes.VARIANTS`: the demo and the comparison sets) is generated in memory at its
recorded seed, sizes and image size. The record of a variant: the generator version, seed, sizes, image size,
`min_visible`, the label names, and per split the fingerprint (`stamp_scenes.fingerprint`: SHA-256 over every image's
bytes and labels, in order), the positives per label and the placement statistics; the wall seconds its generation
took, with the worker processes. `--check` says per variant and split whether the fingerprint matches; a generator
version other than the recorded one is a mismatch too.

`--write` is for a deliberate change of the generator (with `GENERATOR_VERSION` raised): it replaces the records of
the variants it generates. A record made before a recipe was tuned is what keeps the comparison honest, so a
changed record needs a reason in its commit.

Exit status: 0 every fingerprint matches (or the records were written), 1 a mismatch (named on stderr), 2 bad
input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from srn_hf.data.stamp_scenes import GENERATOR_VERSION, VARIANTS, describe_split, generate_stamp_scenes
from srn_hf.report import write_json

DATASETS_FILE = Path(__file__).resolve().parent / "datasets.json"


class DatasetsError(ValueError):
    """Bad input of the command (an unknown variant, a missing record): one line, exit status 2."""


def generate(name: str, seed: int, sizes: list[int], workers: int | None) -> tuple[dict, float]:
    """The variant generated in memory at `seed` and `sizes`: its record and the wall seconds it took."""
    started = time.perf_counter()
    dataset = generate_stamp_scenes(None, sizes=tuple(sizes), seed=seed, num_workers=workers, variant=name)
    seconds = time.perf_counter() - started
    variant = VARIANTS[name]
    train = dataset["train"]
    record = {
        "description": variant.description,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": list(sizes),
        "image_size": train[0]["image"].width if len(train) else variant.image_size,
        "min_visible": variant.min_visible,
        "labels": train.features["labels"].feature.names,
        "splits": {split: describe_split(data) for split, data in dataset.items()},
    }
    return record, seconds


def write(names: list[str], path: Path, seed: int, sizes: list[int] | None, workers: int | None) -> None:
    """Generate `names` and record them in `path` (other variants' records are kept)."""
    records = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        record, seconds = generate(name, seed, sizes or list(VARIANTS[name].sizes), workers)
        record["generation"] = {"wall_seconds": round(seconds, 1), "workers": workers or os.cpu_count()}
        records[name] = record
        print(f"{name}: generated in {seconds:.0f} s", flush=True)
    write_json(path, dict(sorted(records.items())))


def check(names: list[str], path: Path, workers: int | None) -> list[str]:
    """Generate the recorded `names` again; the mismatches, one line each."""
    records = json.loads(path.read_text())
    mismatches = []
    for name in names:
        recorded = records[name]
        if recorded["generator_version"] != GENERATOR_VERSION:
            mismatches.append(
                f"{name}: recorded with generator version {recorded['generator_version']}, the generator is "
                f"{GENERATOR_VERSION}"
            )
            continue
        record, seconds = generate(name, recorded["seed"], recorded["sizes"], workers)
        if record["labels"] != recorded["labels"]:
            mismatches.append(f"{name}: labels {record['labels']} differ from the recorded {recorded['labels']}")
            continue
        for split, described in record["splits"].items():
            expected = recorded["splits"][split]["fingerprint"]
            same = described["fingerprint"] == expected
            print(f"{name} {split}: {'matches' if same else 'DIFFERS'} ({seconds:.0f} s for the variant)", flush=True)
            if not same:
                mismatches.append(f"{name} {split}: fingerprint {described['fingerprint']}, recorded {expected}")
    return mismatches


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="generate the recorded variants again and compare")
    action.add_argument("--write", action="store_true", help="generate the variants and record them")
    parser.add_argument("--variants", nargs="+", default=None, help=f"among {', '.join(VARIANTS)} (default: all)")
    parser.add_argument(
        "--file", type=Path, default=DATASETS_FILE, help="the records (default: benchmarks/datasets.json)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--write: the seed (default 0)")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VAL", "TEST"),
        help="--write: default the variant's",
    )
    parser.add_argument("--workers", type=int, default=None, help="generating processes (default: all CPUs)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.variants or [] if name not in VARIANTS]
    if unknown:
        raise DatasetsError(f"--variants: unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    if args.check:
        if not args.file.exists():
            raise DatasetsError(f"--file {args.file}: no such file (write it with --write)")
        recorded = json.loads(args.file.read_text())
        missing = [name for name in args.variants or [] if name not in recorded]
        if missing:
            raise DatasetsError(f"--variants: {missing[0]!r} has no record in {args.file}")
        args.variants = args.variants or list(recorded)
    args.variants = args.variants or list(VARIANTS)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except DatasetsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.write:
        write(args.variants, args.file, args.seed, args.sizes, args.workers)
        return 0
    mismatches = check(args.variants, args.file, args.workers)
    for line in mismatches:
        print(f"mismatch: {line}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
