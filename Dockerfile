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

# For a base without torch: empty = torch from PyPI (CUDA wheels on Linux); the CPU build:
# https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=""
# The Ray release the fast path was tested on (tune_app/fastpath TESTED_RAY); any other in pyproject's
# range runs in stock mode. A cluster's nodes and the driver must run the same Ray.
ARG RAY_VERSION=2.60.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# Dependencies first (cached while only the code changes), installed the way the README says. One torch:
# the NGC base ships its own CUDA build (with its NCCL and cuDNN), which stays, pinned so that no
# dependency replaces it; a PyPI torch on top would add a second CUDA stack. A base without torch
# (python:3.11-slim) gets the README's torch==2.13.0.
COPY pyproject.toml README.md ./
COPY tune_app ./tune_app
RUN echo "ray==${RAY_VERSION}" > /tmp/pins.txt && \
    if python -c "import torch" 2>/dev/null; then \
      python -c "import torch; print('torch==' + torch.__version__)" >> /tmp/pins.txt && pip install -c /tmp/pins.txt -e .; \
    else pip install torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} && pip install -c /tmp/pins.txt -e .; fi

# torchvision's ImageNet ResNet-18 (model.pretrained_backbone) in the image, so pods never download it;
# TUNE_APP_BACKBONE_URL at build time takes it from a mirror.
ARG TUNE_APP_BACKBONE_URL=""
ENV TORCH_HOME=/opt/torch
RUN TUNE_APP_BACKBONE_URL="${TUNE_APP_BACKBONE_URL}" python -m tune_app weights fetch

COPY configs ./configs
COPY search_spaces ./search_spaces
COPY osmo ./osmo
COPY benchmarks ./benchmarks

ENTRYPOINT ["python", "-m", "tune_app"]
CMD ["--help"]
