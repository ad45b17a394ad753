"""What every benchmark records beside its numbers: the machine and the command."""

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's block of ``cpuinfo``, field by field (empty where /proc is absent): every
    core of these machines is the same CPU."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def device_name(cpuinfo: Path = CPUINFO) -> str | None:
    """The card's name where CUDA is present, else the CPU's model name with its family and model numbers
    (None where neither is known): what a wall time depends on, unlike the host name, which is the same on
    every machine here. The numbers tell apart generations sold under one name: "Intel(R) Xeon(R)
    Processor" is an Intel with AMX (model 143) and one without (model 207), whose times differ by 2x."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    fields = cpu_fields(cpuinfo)
    name = fields.get("model name")
    if name is None or "cpu family" not in fields or "model" not in fields:
        return name
    return f"{name} (family {fields['cpu family']} model {fields['model']})"


def cpu_generation(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """The CPU's family and model numbers and whether it has AVX-512 and AMX: "AMD EPYC" names several
    generations whose throughput differs by 2x, and these tell them apart (empty where /proc is absent)."""
    fields = cpu_fields(cpuinfo)
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_family": fields.get("cpu family"),
        "cpu_model": fields.get("model"),
        "avx512": "avx512f" in flags,
        "amx": "amx_tile" in flags,
    }


def machine_info(gpu: bool = False) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "device": device_name(),
        **cpu_generation(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def source_commit() -> str | None:
    """The commit the code ran from, "+changes" when tracked files differ from it (None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, check=False).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def provenance(script: str) -> dict[str, str | None]:
    """The command line that reproduces a result (the script's path relative to the repository), and the
    commit it ran from."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {
        "command": " ".join(["python", str(shown), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
    }


def write_result(out: Path, result: Any, *, indent: int = 2) -> Path:
    """Write a benchmark's result as indented JSON (its folder made if missing), say where, and return the
    path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent, default=str) + "\n")
    print(f"wrote {out}")
    return out
