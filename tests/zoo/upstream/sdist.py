"""The libraries' own test suites, as they ship in the sdists of the installed versions.

`fetch_sdist("timm")` downloads (with pip) and unpacks the sdist of the timm version installed here, once per version,
and returns the unpacked source folder; nothing of it is kept in this repository. The cache folder is
`SRN_HF_UPSTREAM_CACHE` or `~/.cache/srn_hf/upstream`.
"""

import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path


def cache_folder() -> Path:
    return Path(os.environ.get("SRN_HF_UPSTREAM_CACHE", Path.home() / ".cache" / "srn_hf" / "upstream"))


def fetch_sdist(package: str) -> Path:
    """The unpacked sdist of `package` at its installed version (e.g. `.../timm-1.0.31`), downloaded on first use."""
    installed = version(package)
    target = cache_folder() / f"{package}-{installed}"
    unpacked = target / "source"
    if unpacked.is_dir():
        return next(unpacked.iterdir())
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{package}=={installed}",
            "--dest",
            str(target),
        ],
        check=True,
    )
    (archive,) = [path for path in target.iterdir() if path.name.endswith((".tar.gz", ".zip"))]
    partial = target / "source.partial"
    with tarfile.open(archive) as sdist:
        sdist.extractall(partial, filter="data")
    partial.rename(unpacked)
    return next(unpacked.iterdir())


def newest_served(package: str) -> str:
    """The newest release of `package` that the package index serves within this project's bounds (`pip index`)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    (bounds,) = [Requirement(line).specifier for line in requires("srn_hf") if Requirement(line).name == package]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", package],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    served = listed.stdout.split("Available versions: ", 1)[1].splitlines()[0].split(", ")
    return str(max(Version(item) for item in served if Version(item) in bounds and not Version(item).is_prerelease))
