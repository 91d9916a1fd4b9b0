#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit from its Python wheels (nvcc, the runtime, NVRTC, headers) into a
# venv, for the `cuda` feature's build and tests on a machine without a system toolkit (no GPU
# needed). scripts/cuda-env.sh finds it. Run as root (or set TEMPEST_CUDA_VENV to a writable
# folder). Pinned through the meta package: 13.5 is too new for cudarc and for the 13.0
# driver's PTX JIT (docs/design.md).
set -euo pipefail
cuda_venv="${TEMPEST_CUDA_VENV:-/opt/cuda13}"
if ! ls "$cuda_venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt-get update
        apt-get install -y --no-install-recommends python3-venv python3-pip
    fi
    python3 -m venv "$cuda_venv"
    "$cuda_venv/bin/pip" install --quiet "cuda-toolkit[nvcc,cudart,nvrtc,cccl,crt,nvvm]==13.0.2"
fi
ls "$cuda_venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc
