# syntax=docker/dockerfile:1
#
# Sluice image: the `sluice` CLI (workers, migrations, submit) plus Flower.
#
#   docker build -t sluice .                                  # CPU-only torch (default)
#   docker build -t sluice --build-arg TORCH_VARIANT=cu130 .  # CUDA 13.0 torch (NVIDIA driver >= 580)
#   docker build -t sluice --build-arg TORCH_VARIANT=cu128 .  # CUDA 12.8 build, where the index has one for this torch
#
# TORCH_VARIANT names a wheel index under https://download.pytorch.org/whl/ (cpu, cu126, cu128,
# cu130, ...); TORCH_INDEX overrides the whole URL (a mirror, or https://pypi.org/simple for the
# PyPI default build). The torch pin must match pyproject.toml.

# Stage 1: the Sluice wheel alone, so the source tree never lands in an image layer.
FROM python:3.11-slim AS wheel
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in its own layer: it is most of the image and changes least often. The project
# install below keeps it, since torch==2.13.0 is satisfied by 2.13.0+cpu / 2.13.0+cu130.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"

COPY --from=wheel /wheels /tmp/wheels
RUN pip install "sluice[monitor] @ file://$(ls /tmp/wheels/sluice-*.whl)" \
    && python -c "import torch, sluice.cli, flower; print('torch', torch.__version__)" \
    && rm -rf /tmp/wheels

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sluice sluice \
    && mkdir -p /models /var/lib/sluice \
    && chown sluice:sluice /models /var/lib/sluice
COPY --chown=sluice:sluice sluice/models.toml /models/models.toml

# Models: /models holds the registry (a copy of the bundled one until you mount your own) and any
# weights it names by relative path; HF_HOME under it lets a pre-filled Hugging Face cache serve
# hub ids. Nothing is downloaded at run time.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/models/huggingface \
    TOKENIZERS_PARALLELISM=false \
    SLUICE_MODELS_FILE=/models/models.toml \
    SLUICE_VAR_DIR=/var/lib/sluice

VOLUME ["/models"]
WORKDIR /home/sluice
USER sluice

ENTRYPOINT ["sluice"]
CMD ["--help"]
