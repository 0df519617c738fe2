# raysight on Ray's own image, so Ray and Python match the KubeRay cluster's exactly.
# GPU image by default (torch's CUDA build from PyPI); for CPU-only nodes build with
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu .
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="raysight" \
      org.opencontainers.image.description="Train and serve vision models with Ray Train and Ray Serve over gRPC" \
      org.opencontainers.image.source="https://github.com/raysight/raysight" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The CUDA wheels that torch 2.13.0 from PyPI resolves to (its Requires-Dist and those of
# cuda-toolkit 13.0.3), pinned because torch leaves nvjitlink, cuda-bindings and
# cuda-pathfinder open. They need an NVIDIA driver for CUDA 13 (580 or later). When
# constraints.txt moves torch, regenerate the list from PyPI's metadata with
#   pip install --dry-run --ignore-installed --report - --only-binary=:all: torch==X.Y.Z
ARG CUDA_WHEELS="\
cuda-toolkit==13.0.3.0 cuda-bindings==13.5.0 cuda-pathfinder==1.9.1 triton==3.7.1 \
nvidia-cublas==13.1.1.3 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
nvidia-cuda-runtime==13.0.96 nvidia-cudnn-cu13==9.20.0.48 nvidia-cufft==12.0.0.61 \
nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66 \
nvidia-cusparse==12.6.3.3 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.29.7 \
nvidia-nvjitlink==13.5.37 nvidia-nvshmem-cu13==3.4.5 nvidia-nvtx==13.0.85"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base image's user, ray:users; numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 1000:100
# Made by that user (who owns /home/ray), so the in-tree build below may write here.
RUN mkdir -p /home/ray/raysight
WORKDIR /home/ray/raysight

# Dependencies only, in a layer that a change to the source leaves valid: it is rebuilt when
# pyproject.toml or a pin changes. constraints.txt holds the versions the tests ran with; its
# torch==2.13.0 is the CPU build on the development machines and, from PyPI's default
# index, the CUDA build here (which also runs on CPU).
COPY --chown=1000:100 pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && echo "${CUDA_WHEELS}" | tr -s ' ' '\n' > /tmp/cuda-constraints.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
        -c constraints.txt -c /tmp/cuda-constraints.txt \
    && rm /tmp/requirements.txt /tmp/cuda-constraints.txt

# raysight itself, installed (not only copied) so Ray's worker and proxy processes can
# import it; the in-tree build's leftovers go in the same layer.
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 src ./src
RUN pip install --no-deps --no-cache-dir . \
    && rm -rf build src/raysight.egg-info \
    && test -x /home/ray/anaconda3/bin/raysight-haproxy
# Ray Serve runs HAProxy through raysight's launcher: stats and metrics listeners on
# 127.0.0.1, an admin socket for its owner only, TLS from RAYSIGHT_TLS_* (the chart's tls).
ENV RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/anaconda3/bin/raysight-haproxy
# The training entrypoint a RayJob runs (python services/train_job.py) and the Serve config.
COPY --chown=1000:100 services ./services

# Ray starts workers at nice 15, which starves them beside a busy driver on a small node.
# RAY_AUTH_MODE is left to the cluster: KubeRay sets it on the pods of a cluster that uses
# token authentication (its authOptions), and a value baked in here would make every
# `ray start` in this image demand a token that such a cluster may not have.
ENV RAY_worker_niceness=0

# gRPC (Open Inference Protocol, image API, health), Serve's HTTP, Prometheus metrics:
# the defaults of `raysight serve`.
EXPOSE 9000 8000 8080
CMD ["raysight", "--help"]
