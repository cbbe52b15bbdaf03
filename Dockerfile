# tune_app image: the package, its configs, search spaces and the OSMO entry scripts, in /app.
#
#   docker build -t tune_app .                                   # GPU: NVIDIA PyTorch base (CUDA, NCCL)
#   docker build -t tune_app:cpu --build-arg BASE=python:3.11-slim \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # CPU-only, for laptops
#   docker run --rm tune_app run search_spaces/lr_grid.yaml      # runs `python -m tune_app ...`
#
# osmo/ray-sweep.yaml runs /app/osmo/head.sh and worker.sh from this image (app_dir: /app).
ARG BASE=nvcr.io/nvidia/pytorch:25.01-py3
FROM ${BASE}

# Empty: torch from PyPI (CUDA wheels on Linux); the CPU build: https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# Dependencies first (cached while only the code changes), installed the way the README says.
COPY pyproject.toml README.md ./
COPY tune_app ./tune_app
RUN pip install torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} && pip install -e .

COPY configs ./configs
COPY search_spaces ./search_spaces
COPY osmo ./osmo
COPY benchmarks ./benchmarks

ENTRYPOINT ["python", "-m", "tune_app"]
CMD ["--help"]
