"""Where `niah run` keeps a GGUF checkpoint converted to safetensors (model and tokenizer), so the doctor
reads the tokenizer the run will load rather than converting the GGUF's again.

    $XDG_CACHE_HOME/niah-doctor/models/<first 24 hex digits of the GGUF's sha256>-<dtype>/

A folder is complete once its marker file is written (the conversion writes it last, then renames the
staging folder into place). Pure Python: no torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_FORMAT = 1  # bump when the cached folder's layout changes
MARKER = "niah-source.json"  # written last inside the cached folder: its presence means complete


def cache_root(cache_dir: str | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "niah-doctor" / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(cache_dir: str | None, gguf: Path, dtype_name: str) -> Path:
    # The dtype is part of the key: a bf16 copy must not serve a float32 request.
    return cache_root(cache_dir) / f"{file_sha256(gguf)[:24]}-{dtype_name}"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def converted_tokenizer_folder(gguf: Path, cache_dir: str | None = None) -> Path | None:
    """A complete converted folder of this GGUF, any dtype (the conversion saves the same tokenizer in
    each), or None before the first run converted it."""
    try:
        prefix = file_sha256(gguf)[:24]
        candidates = sorted(cache_root(cache_dir).glob(f"{prefix}-*"))
    except OSError:
        return None
    return next((folder for folder in candidates if is_complete(folder)), None)
