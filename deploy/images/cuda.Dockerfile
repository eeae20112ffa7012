# The CUDA serving image: recall-engine, its built-in channels and ONNX Runtime with the
# CUDA execution provider (onnxruntime-gpu 1.31: CUDA 13, cuDNN 9); no PyTorch, no
# train/eval extras. Build from the repository root:
#
#   docker build -f deploy/images/cuda.Dockerfile -t recall-engine:cuda .
#
# Run it with a GPU (Kubernetes: the NVIDIA device plugin, deploy/k8s/overlays/gpu;
# docker: --gpus 1). Same user, read-only root, tini and entrypoint as the CPU image;
# the encoders fall back to CPU, and say so in the log, when no GPU is visible. TensorRT
# is not in this base: ONNX Runtime logs that and uses CUDA.

# NVIDIA's runtime image with cuDNN; Ubuntu 24.04, so python3 is 3.12 (the project
# supports >= 3.11; every pinned wheel has a cp312 build).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# checkov:skip=CKV_DOCKER_7:the base is a build argument whose default names a fixed tag, which checkov cannot see through the variable
FROM ${BASE_IMAGE} AS base
RUN if ! command -v tini >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv tini ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---------------------------------------------------------------- build: the venv
FROM base AS build
# PIP_NO_INDEX=1: install only from wheels staged in deploy/images/wheelhouse/ (as
# build-cpu.sh does for the CPU image); empty: the wheelhouse first, then the index.
ARG PIP_NO_INDEX=
ENV PIP_NO_INDEX=${PIP_NO_INDEX} PIP_FIND_LINKS=/wheelhouse PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/images/wheelhouse/ /wheelhouse/
COPY deploy/images/requirements-cuda.txt /src/requirements.txt
# The pinned list is the whole environment (--no-deps).
RUN python3 -m venv /opt/recall-engine \
    && /opt/recall-engine/bin/pip install --no-deps -r /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY protos /src/protos
COPY engine /src/engine
COPY plugins /src/plugins
COPY exporters /src/exporters
COPY bench /src/bench
RUN /opt/recall-engine/bin/pip install --no-deps /src
# Every requirement met; the serving imports; ONNX Runtime built with CUDA (whether a
# GPU is there is known only at run time).
RUN /opt/recall-engine/bin/pip check \
    && /opt/recall-engine/bin/python -c "import onnxruntime, recall_engine.serving.server, recall_engine.plugins.llm; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()" \
    && /opt/recall-engine/bin/pip uninstall -q -y pip setuptools
# entrypoint is mode 0755 in git and COPY keeps the mode
COPY deploy/images/entrypoint /opt/recall-engine/bin/entrypoint
COPY deploy/images/health_probe.py /opt/recall-engine/libexec/health_probe.py

# ---------------------------------------------------------------- serve
FROM base AS serve
COPY --from=build /opt/recall-engine /opt/recall-engine
# No bytecode writes (the root filesystem is read-only; pip compiled it at install),
# logs unbuffered, HOME and temp files on the /tmp volume.
ENV PATH=/opt/recall-engine/bin:${PATH} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp TMPDIR=/tmp
WORKDIR /tmp
USER 10001:10001
# gRPC (Recall, health, reflection; AdminService too unless server.admin_addr),
# AdminService alone when server.admin_addr = "0.0.0.0:50052", Prometheus /metrics
# (serve runs one process per usable core, the container's cpu limit counted: process i
# serves /metrics on 9464 + i; add --processes 1 for a single port).
EXPOSE 50051 50052 9464
# Readiness: SERVING once every channel has loaded and warmed up. Kubernetes ignores
# this and uses the Deployment's probes; podman needs `--format docker` to keep it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/opt/recall-engine/bin/python", "/opt/recall-engine/libexec/health_probe.py"]
# tini is PID 1: it forwards SIGTERM/SIGINT/SIGHUP to the server (which drains on
# SIGTERM and reloads its config on SIGHUP) and reaps any orphaned child.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/recall-engine/bin/entrypoint"]
CMD ["recall-engine", "serve", "--artifacts", "/artifacts", "--addr", "0.0.0.0:50051", \
     "--metrics-addr", "0.0.0.0:9464"]
