"""How long the service's safety report takes with the policy's defaults (protocol v2 on 64 harmful, 32
harmless and 32 borderline prompts, greedy and 2 samples, 128 tokens; drift on 32 alignment pairs; the
default judge), for the default base with a LoRA adapter: the default attack's adapter of
generation_speed.py (trained once, cached). Target: at most 3 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/service_report_time.py

Writes benchmarks/results/service_report_time-cpu-2cores.json.
"""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from generation_speed import default_adapter

from service.policy import default_policy
from service.settings import ServiceSettings
from vaccine_core.mixing import SAFETY_FILE
from vaccine_core.moderation import shared_judge
from worker.safety import ReportPlan, safety_report

TARGET_SECONDS = 180


def main() -> None:
    settings = ServiceSettings()
    adapter = default_adapter(settings.home / "benchmarks" / "generation_speed")
    plan = ReportPlan.of(default_policy(settings), settings)
    base = SimpleNamespace(alignment={"data": str(settings.data_dir / SAFETY_FILE)}, path=None)
    shared_judge(settings.safety_judge)  # a worker loads its judge once, not per report
    started = time.perf_counter()
    report = safety_report(adapter, base, settings, plan)
    seconds = time.perf_counter() - started
    result = {
        "seconds": round(seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "plan": plan.__dict__,
        "harmful_score": report["harmful_score"],
        "degenerate_harmless": report["degenerate_harmless"],
        "protocol": report["protocol"],
        "machine": machine_info(),
        **provenance(__file__),
    }
    out = RESULTS / "service_report_time-cpu-2cores.json"
    write_result(out, result)
    print(json.dumps({k: result[k] for k in ("seconds", "target_seconds", "harmful_score")}))


if __name__ == "__main__":
    main()
