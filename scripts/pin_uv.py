"""Rewrite tools/uv/requirements.txt for one uv release, with the sha256 of each of its Linux and macOS
wheels as PyPI lists them (`make uv-pin UV_VERSION=X.Y.Z`). Standard library only: it runs before any venv.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tools" / "uv" / "requirements.txt"
HEADER = """\
# uv, the tool that installs every environment from uv.lock. `make` installs this exact release into the
# tools cache (${EXT_AUTHZ_TOOLS_DIR:-~/.cache/ext-authz/tools}/uv-VERSION) with pip --require-hashes.
# To move to a newer uv: `make uv-pin UV_VERSION=X.Y.Z` rewrites this file from PyPI's listing.
"""


def wheel_hashes(version: str) -> list[str]:
    req = urllib.request.Request(
        "https://pypi.org/simple/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (a fixed https URL)
        listing = json.load(resp)
    prefix = f"uv-{version}-"
    return [
        f["hashes"]["sha256"]
        for f in listing["files"]
        if f["filename"].startswith(prefix)
        and f["filename"].endswith(".whl")
        and ("linux" in f["filename"] or "macosx" in f["filename"])
        and not f.get("yanked")
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: make uv-pin UV_VERSION=X.Y.Z", file=sys.stderr)
        return 2
    version = argv[0]
    hashes = wheel_hashes(version)
    if not hashes:
        print(f"PyPI lists no Linux or macOS wheel of uv {version}", file=sys.stderr)
        return 1
    lines = [f"uv=={version} \\", *(f"    --hash=sha256:{h} \\" for h in hashes)]
    lines[-1] = lines[-1].removesuffix(" \\")
    TARGET.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"{TARGET.relative_to(ROOT)}: uv {version}, {len(hashes)} wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
