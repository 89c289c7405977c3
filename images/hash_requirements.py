"""Add the sha256 of every file the package index offers for each pinned requirement of
the product image, so ``pip install --require-hashes`` installs exactly those files
whatever the platform picks (run after changing a pin: ``make requirements``).

Reads ``name==version`` lines (hashes already there are replaced; a pin may name the
extras other pins ask for, as ``httpx2[http2,ws]==...``: older pips in hash mode refuse a
requirement with extras that no pin names) and the index's simple API (PEP 503), where
each link carries its file's sha256.
"""

from __future__ import annotations

import re
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

INDEX = "https://pypi.org/simple"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def file_hashes(name: str, version: str) -> list[str]:
    """The sha256 of each wheel and sdist of ``name`` at ``version``, sorted."""
    with urllib.request.urlopen(f"{INDEX}/{normalized(name)}/", timeout=60) as reply:
        page = reply.read().decode()
    links = _Links()
    links.feed(page)
    hashes = set()
    for href in links.hrefs:
        url, _, fragment = href.partition("#sha256=")
        filename = url.rsplit("/", 1)[-1]
        stem = filename.removesuffix(".whl").removesuffix(".tar.gz").removesuffix(".zip")
        dist, _, rest = stem.partition("-")
        file_version = rest.split("-", 1)[0]
        if fragment and normalized(dist) == normalized(name) and file_version == version:
            hashes.add(fragment)
    if not hashes:
        raise SystemExit(f"{name}=={version}: the index offers no file")
    return sorted(hashes)


def main() -> None:
    lines = REQUIREMENTS.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    pins = [
        line.split()[0]
        for line in lines
        if line.strip() and not line.startswith(("#", " ", "\t", "--"))
    ]
    out = header[:1] or ["# Pinned runtime dependencies of the product image."]
    out.append("# Hashes: python images/hash_requirements.py (installed with --require-hashes).")
    for pin in pins:
        name, _, version = pin.partition("==")
        hashes = file_hashes(name.split("[", 1)[0], version)
        out.append(f"{pin} \\")
        out += [
            f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "")
            for i, h in enumerate(hashes)
        ]
        print(f"{pin}: {len(hashes)} files", file=sys.stderr)
    REQUIREMENTS.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
