#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what the GPU image lacks for the project, as Python 3.12 x86-64 wheels:
# the image has torch, transformers, peft, accelerate, numpy, jinja2, httpx, pytest, tqdm, typer and more
# (the device tool's KINDS.md lists them); the service's own needs are not there. Run here, then carry
# .whl with benchmarks/gpu/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
# each name here is missing on the image (found by a dry run in a Python with only the image's packages);
# its own needs that the image lacks are listed too (--no-deps)
wanted=(
    pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
    gguf fastapi starlette python-multipart uvicorn sqlalchemy greenlet alembic mako
    celery kombu billiard vine amqp redis click-didyoumean click-repl click-plugins prompt-toolkit wcwidth tzdata
    limits deprecated itsdangerous openai distro jiter sniffio orjson
    httpx2 httpcore2 truststore  # openai 3 talks through httpx2
    opentelemetry-api tzlocal  # fastapi's telemetry hooks; celery's beat schedule
)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${wanted[@]}"
du -sh .whl
