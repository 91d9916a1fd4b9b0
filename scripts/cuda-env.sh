#!/usr/bin/env bash
# Source this (`. scripts/cuda-env.sh`) before building with `--features cuda`. It finds nvcc,
# exports what candle's and our build scripts need, and, on a machine without the CUDA driver
# or cuBLAS/cuRAND (a CI machine, a laptop), makes link stubs so that test binaries link and
# start; there `Device::new_cuda(0)` returns an error and the CUDA tests skip.
#
# nvcc is taken from, in order: $NVCC; `nvcc` on PATH; /usr/local/cuda/bin; the CUDA 13.0
# toolkit wheels in $TEMPEST_CUDA_VENV (default /opt/cuda13, made by scripts/install-cuda-toolkit.sh:
# `python3 -m venv /opt/cuda13 && /opt/cuda13/bin/pip install
# "cuda-toolkit[nvcc,cudart,nvrtc,cccl,crt,nvvm]==13.0.2"`).
# Sets TEMPEST_NVCC to its path, or leaves it empty when there is none (the caller skips).
# Exports: PATH, CUDA_ROOT (include/ and lib/ of that toolkit), CUDA_COMPUTE_CAP (90 where
# no GPU answers), LIBRARY_PATH and LD_LIBRARY_PATH (the toolkit's lib/ and the stubs).

TEMPEST_NVCC=""
_tempest_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${TEMPEST_CUDA_VENV:-/opt/cuda13}"
for _c in "${NVCC:-}" "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc \
    "$_venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
    if [ -n "$_c" ] && [ -x "$_c" ]; then TEMPEST_NVCC="$_c"; break; fi
done

if [ -n "$TEMPEST_NVCC" ]; then
    _bin="$(cd "$(dirname "$TEMPEST_NVCC")" && pwd)"
    export CUDA_ROOT="${CUDA_ROOT:-$(dirname "$_bin")}"
    export PATH="$_bin:$PATH"
    if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
        _cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.' || true)"
        export CUDA_COMPUTE_CAP="${_cap:-90}"
    fi
    _lib="$CUDA_ROOT/lib"
    [ -d "$CUDA_ROOT/lib64" ] && _lib="$CUDA_ROOT/lib64"
    _stubs="$_tempest_root/target/cuda-stubs"
    mkdir -p "$_stubs"
    # Unversioned names for the linker, where the toolkit (the wheels) has versioned ones only.
    for _so in "$_lib"/libcudart.so.* "$_lib"/libnvrtc.so.*; do
        [ -e "$_so" ] || continue
        _base="$(basename "$_so" | sed -E 's/\.so\..*/.so/')"
        case "$_so" in *alt*|*builtins*) continue ;; esac
        [ -e "$_lib/$_base" ] || ln -sf "$_so" "$_stubs/$_base"
    done
    # Stubs for the libraries that cudarc links and this machine lacks: every function returns
    # an error (CUDA_ERROR_STUB_LIBRARY = 34 for the driver), so a program starts, and asking
    # for a device fails cleanly. The sonames are the real libraries' (CUDA 13), so a binary
    # linked here runs against the real ones where they exist.
    _cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -n1 || true)"
    _stub() { # name soname sys-file prefix error
        local name="$1" soname="$2" sys="$3" prefix="$4" err="$5"
        local real
        real="$(ldconfig -p 2>/dev/null | awk -v n="lib$name.so" 'index($1, n) == 1 && substr($1, length(n) + 1, 1) ~ /^(\.|)$/ { print $NF; exit }' || true)"
        if [ -n "$real" ]; then
            # The real library: give the linker its unversioned name if the system has none.
            [ -e "$_stubs/lib$name.so" ] || [ -e "$(dirname "$real")/lib$name.so" ] || ln -sf "$real" "$_stubs/lib$name.so"
            return 0
        fi
        if [ -e "$_lib/lib$name.so" ] || [ -e "$_stubs/$soname" ]; then
            return 0
        fi
        if [ -z "$_cudarc" ] || [ ! -f "$_cudarc/src/$sys/sys/mod.rs" ]; then
            echo "cuda-env: no cudarc sources to make a stub lib$name.so from (run cargo fetch first)" >&2
            return 0
        fi
        grep -ohE "fn ${prefix}[A-Za-z0-9_]*\(" "$_cudarc/src/$sys/sys/mod.rs" | sed -E 's/^fn |\($//g' \
            | sort -u | awk -v e="$err" '{ printf "int %s(void) { return %s; }\n", $1, e }' \
            >"$_stubs/$name-stub.c"
        cc -shared -fPIC -Wl,-soname,"$soname" -o "$_stubs/$soname" "$_stubs/$name-stub.c"
        ln -sf "$soname" "$_stubs/lib$name.so"
    }
    _stub cuda libcuda.so.1 driver cu 34
    _stub cublas libcublas.so.13 cublas cublas 1
    _stub cublasLt libcublasLt.so.13 cublaslt cublasLt 1
    _stub curand libcurand.so.10 curand curand 201
    export LIBRARY_PATH="$_stubs:$_lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$_stubs:$_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
unset _c _bin _cap _lib _stubs _so _base _cudarc _venv _tempest_root
