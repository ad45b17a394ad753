"""What every benchmark records beside its numbers: the machine and the command."""

import os
import platform
import sys
from datetime import UTC, datetime
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


def provenance(script: str) -> dict[str, str]:
    return {
        "command": f"python {script} " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
