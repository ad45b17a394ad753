"""Run directories: a PEFT adapter plus ``manifest.json`` that says what produced it and hashes every file.

Reading manifests needs no torch (the API reads them); only writing one asks for the library versions.
"""

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from vaccine_core import __version__

MANIFEST = "manifest.json"
MERGED_DIR = "merged"  # an alignment run's merged model, the base every fine-tuning job starts from
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file of a saved adapter
CHECKPOINTS_DIR = "checkpoints"  # a run's resumable training states, left out of its file hashes


def value_key(value: Any) -> str:
    """12 hex digits of anything JSON holds (keys sorted, anything else as its ``str``): the name a cached
    artifact is kept under, so that what produced it names it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` but the manifest itself and training checkpoints."""
    hashes = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or relative.name == MANIFEST or relative.parts[0] == CHECKPOINTS_DIR:
            continue
        hashes[relative.as_posix()] = sha256_file(path)
    return hashes


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    full = {
        "format_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {
            "vaccine_core": __version__,
            "torch": version("torch"),
            "transformers": version("transformers"),
            "python": platform.python_version(),
        },
        **manifest,
        "files": file_hashes(directory),
    }
    (directory / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return full


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def alignment_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an alignment run (``vaccine align``'s output); ValueError when it is not one."""
    manifest = read_manifest(directory) if Path(directory).is_dir() else None
    if manifest is None or manifest.get("kind") != "alignment":
        raise ValueError(f"{directory} is not an alignment run (a `vaccine align` output with manifest.json)")
    return manifest


def verify_files(directory: Path) -> list[str]:
    """Names of files whose sha256 no longer matches the manifest (or that are missing)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [MANIFEST]
    actual = file_hashes(directory)
    return [name for name, digest in manifest["files"].items() if actual.get(name) != digest]
