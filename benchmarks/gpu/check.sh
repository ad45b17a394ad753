#!/usr/bin/env bash
# The one GPU check (issue: GPU workers for real), for a CUDA machine with Python, torch, transformers and
# peft already there (the device machine's image), run from the repository's root:
#
#   bash benchmarks/gpu/check.sh [OUT]     # results and log under OUT (default: $OUT, else gpu-check)
#   bash benchmarks/gpu/check.sh --cpu     # the dry run anywhere: the same steps on the CPU, tiny shapes
#
# 1. installs what the image lacks from the wheels in .whl/ (benchmarks/gpu/fetch_wheels.sh fills it);
# 2. runs the `cuda` tests (tests/cuda) with a JUnit report;
# 3. times SFT, Vaccine tau=1 and tau=100 (benchmarks/step_cost.py) at the default model's shape and at
#    Llama2-7B's, each configuration in its own process, and writes step_cost-cuda-<shape>.json.
# Budget: about 7 minutes on an H200 (measured 2026-12-04 with one round: 264 s in all, the tests 70 s of
# it; a second round of the step cost adds about 3 minutes).
set -uo pipefail
cd "$(dirname "$0")/../.."

cpu=0
if [[ "${1:-}" == "--cpu" ]]; then cpu=1; shift; fi
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
exec > >(tee "$out/check.log") 2>&1
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if (( cpu )) && [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then python=.venv/bin/python; fi

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing $(ls .whl/*.whl | wc -l) carried wheels"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"  # the project from its tree: nothing to build

"$python" - <<'PY' | tee "$out/device.txt"
import torch, transformers, peft
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}: {name}")
PY
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/device.txt"
fi

status=0
echo "== cuda tests"
if (( cpu )); then export VACCINE_TEST_DEVICE=cpu; fi
timeout 360 "$python" -m pytest -q -m cuda tests/cuda -p no:cacheprovider -rs \
    --junitxml "$out/cuda-tests.xml" || status=1

echo "== step cost"
if (( cpu )); then
    shapes=(tiny); device=cpu; steps=6; rounds=2
else  # GPU steps take a fraction of a second: 20 timed steps cost little beside each process's start
    shapes=(smollm2-135m llama2-7b); device=cuda; steps=21; rounds=2  # two rounds: the H200's jitter
fi
for shape in "${shapes[@]}"; do
    timeout 240 "$python" benchmarks/step_cost.py --shape "$shape" --device "$device" --steps "$steps" \
        --rounds "$rounds" --out "$out/step_cost-$device-$shape.json" || status=1
done
echo "== done (status $status): $(ls "$out")"
exit $status
