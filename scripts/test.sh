#!/usr/bin/env bash
# The project's test command: formatting, lints, every test of the workspace, and a build of
# the fuzz targets. `.ci/run` runs exactly this on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
# candle and criterion use rayon; on a small shared machine more threads only spin.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"

# Optional features that CI builds and tests too: LAME and libopus encoders (cff-encode), the
# SIMD Ogg CRC (cff-blocks). `.ci/run` installs what they need (cmake).
features="mp3,opus,cff-blocks/simd-crc"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
cargo test --workspace --features "$features"
# cff-blocks without its default `simd-crc`: the readers on the table CRC alone.
cargo test -p cff-blocks --no-default-features
# tempest-tokenize without its default `tensors` (how cff-encode and tempest-kernels take it),
# and the data crate free of any tensor library.
cargo test -p tempest-tokenize --no-default-features
if cargo tree -p tempest-data -e normal | grep -q candle; then
    echo "tempest-data depends on candle:"; cargo tree -p tempest-data -e normal -i candle-core
    exit 1
fi
# The CUDA path (feature `cuda`: our kernels in tempest-kernels, candle's CUDA backend), opt-in
# with TEMPEST_CUDA_CHECK=1 where an nvcc is found (scripts/cuda-env.sh;
# scripts/install-cuda-toolkit.sh installs the CUDA 13.0 wheels). No GPU is needed: the kernels
# compile to PTX, test binaries link against stub CUDA libraries, and the CUDA tests print why
# they skip. Not in CI yet: candle-kernels' nvcc build alone took about 55 minutes on the loaded
# 2-core development machine (docs/benchmarks.md), too close to CI's 90-minute limit.
. scripts/cuda-env.sh
if [ "${TEMPEST_CUDA_CHECK:-0}" = 1 ] && [ -n "$TEMPEST_NVCC" ]; then
    echo "CUDA build with $TEMPEST_NVCC (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
    # (`examples/gpu_check.rs` is left to `scripts/gpu-check.sh prepare`: checking the root
    # package with CUDA took 14 more minutes here.)
    cargo clippy -p tempest-kernels --all-targets --features cuda -- -D warnings
    cargo clippy -p tempest-model --all-targets --features cuda -- -D warnings
    cargo test -p tempest-kernels --features cuda --lib cuda::
    cargo test -p tempest-model --features cuda --test cuda
else
    echo "skipped: the CUDA build and tests (set TEMPEST_CUDA_CHECK=1 with an nvcc installed by"
    echo "  scripts/install-cuda-toolkit.sh; nvcc found: ${TEMPEST_NVCC:-none})"
fi
# Our CUDA kernels (crates/tempest-kernels/cuda/tempest.cu) through nvcc to PTX, as that
# crate's build.rs compiles them under feature `cuda`, wherever an nvcc is found (`.ci/run`
# installs the CUDA 13.0 wheels): seconds, so CI keeps the .cu file compiling even though
# candle's CUDA build is too slow for it. What this does not check: candle's CUDA backend, our
# launch code (crates/tempest-kernels/src/cuda/launch.rs), the GPU.
if [ -n "$TEMPEST_NVCC" ]; then
    ptx_dir="$(mktemp -d)"
    "$TEMPEST_NVCC" --ptx -arch=compute_90 -O3 -std=c++17 -o "$ptx_dir/tempest.ptx" \
        crates/tempest-kernels/cuda/tempest.cu
    echo "tempest-kernels/cuda/tempest.cu compiles to PTX for compute_90 ($(wc -c <"$ptx_dir/tempest.ptx") bytes) with $TEMPEST_NVCC"
    rm -rf "$ptx_dir"
    # The NCCL backend (tempest-train's feature `nccl`: cudarc's bindings, loaded at run time,
    # so neither CUDA's nor NCCL's libraries are needed to build; cudarc takes the CUDA version
    # from this nvcc): lints, and its tests, which on a machine without a GPU check that
    # opening it is an error naming NCCL, not a crash.
    cargo clippy -p tempest-train --all-targets --features nccl -- -D warnings
    cargo test -p tempest-train --features nccl --lib dist::
    # With MPI as well (NCCL's id sent by MPI under mpirun), where Open MPI is installed.
    if command -v mpicc >/dev/null; then
        cargo clippy -p tempest-train --all-targets --features nccl,mpi -- -D warnings
    fi
else
    echo "skipped: tempest-kernels/cuda/tempest.cu to PTX and the NCCL backend's build (no nvcc;"
    echo "  scripts/install-cuda-toolkit.sh installs one)"
fi
# Data-parallel training over MPI (feature `mpi`; docs/distributed.md), where Open MPI is
# installed (`.ci/run` installs libopenmpi-dev, openmpi-bin and libclang-dev): lints with the
# feature, then two ranks under mpirun (scripts/mpi-check.sh, about a minute once built).
if command -v mpirun >/dev/null && command -v mpicc >/dev/null; then
    cargo clippy --workspace --all-targets --features mpi -- -D warnings
    cargo test -p tempest-train --features mpi --lib dist::
    scripts/mpi-check.sh
else
    echo "skipped: the MPI build and its two-rank checks (no mpirun/mpicc: install libopenmpi-dev"
    echo "  openmpi-bin libclang-dev, as .ci/run does)"
fi
# The fuzz targets live outside the workspace (cargo-fuzz builds them with its own flags);
# a plain build keeps them compiling. Run them with `cargo fuzz run <target>`.
cargo build --manifest-path fuzz/Cargo.toml
