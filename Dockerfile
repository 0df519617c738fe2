# raysight on Ray's own image, so the Ray version matches the KubeRay cluster's exactly.
# GPU image by default (CUDA torch from PyPI); for CPU-only nodes build with
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu .
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

WORKDIR /home/ray/raysight
# Dependencies first: this layer is reused until pyproject.toml or the pins change.
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
COPY --chown=ray:users src ./src
# Installed (not only copied) so Ray's worker and proxy processes can import raysight.
# The pins keep Ray and protobuf at the tested versions; torch comes from PyPI's default
# index, the CUDA build, which also runs on CPU.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt "torch==2.13.0" . \
    && rm /tmp/constraints.txt
COPY --chown=ray:users services ./services

ENV RAY_worker_niceness=0
CMD ["raysight", "--help"]
