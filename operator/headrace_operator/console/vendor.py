"""The console's one third-party file set: uPlot, pinned, vendored, and checked.

uPlot (MIT, about 50 KB minified) draws the console's charts. Its built files
are copied from the npm package of the pinned `VERSION` into
``static/vendor/uplot/`` with its licence, so that the page needs no CDN and
no build step. `check` compares the vendored files with the checksums recorded
here (a unit test runs it); `fetch` downloads the pinned package with
``npm pack`` and checks its published integrity and the same checksums (run
it when bumping the version)::

    python -m headrace_operator.console.vendor check
    python -m headrace_operator.console.vendor fetch   # needs npm and the registry

>>> check()
[]
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from headrace_operator.console.server import STATIC

__all__ = ["FILES", "INTEGRITY", "PACKAGE", "VERSION", "check", "fetch"]

PACKAGE = "uplot"
VERSION = "1.6.32"
INTEGRITY = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
"""The npm registry's ``dist.integrity`` of the pinned tarball."""

# vendored name -> (path in the npm tarball, sha256)
FILES: dict[str, tuple[str, str]] = {
    "uPlot.iife.min.js": (
        "package/dist/uPlot.iife.min.js",
        "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    ),
    "uPlot.min.css": (
        "package/dist/uPlot.min.css",
        "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    ),
    "LICENSE": ("package/LICENSE", "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd"),
}
DIR = STATIC / "vendor" / "uplot"


def check(directory: Path = DIR) -> list[str]:
    """What differs between the vendored files and the pinned checksums ([] when they match).

    >>> check(Path("/nonexistent"))[0]
    'uPlot.iife.min.js: missing'
    """
    problems = []
    for name, (_src, sha) in FILES.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != sha:
            problems.append(f"{name}: sha256 {got}, pinned {sha}")
    return problems


def fetch(directory: Path = DIR) -> list[str]:
    """``npm pack`` the pinned version, check its integrity and files, and vendor them.

    Returns the problems found (nothing is written then); [] means vendored.
    """
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, check=True, capture_output=True
        )
        tarball = Path(tmp) / f"{PACKAGE}-{VERSION}.tgz"
        raw = tarball.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(raw).digest()).decode()
        if integrity != INTEGRITY:
            return [f"{tarball.name}: integrity {integrity}, pinned {INTEGRITY}"]
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        out = Path(tmp) / "out"
        out.mkdir()
        for name, (src, _sha) in FILES.items():
            shutil.copyfile(Path(tmp) / src, out / name)
        problems = check(out)
        if problems:
            return problems
        directory.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(out / name, directory / name)
    return []


def _main(argv: list[str]) -> int:
    what = argv[0] if argv else "check"
    problems = fetch() if what == "fetch" else check()
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{PACKAGE} {VERSION}: {len(FILES)} files match the pinned checksums")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
