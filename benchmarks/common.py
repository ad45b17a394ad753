"""What every benchmark records beside its numbers: the machine and the command."""

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine_info(gpu: bool = False) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if gpu and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


REPO = Path(__file__).resolve().parents[1]


def provenance(script: str) -> dict[str, str]:
    """The command line that reproduces a result (the script's path relative to the repository)."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {
        "command": " ".join(["python", str(shown), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
