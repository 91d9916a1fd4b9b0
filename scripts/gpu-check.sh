#!/usr/bin/env bash
# The GPU check of issues #8 and #18, in one call on a CUDA machine (about 5 to 8 minutes on an
# H100/H200): every CUDA kernel against its CPU reference on fresh random inputs with poisoned
# outputs (f32 within 1e-5 relative, bf16 within 1e-2), the model with our kernels against
# candle's stock ops, a training step of the `paper` preset timed both ways; then `train`
# end to end with `--device cuda` (the same loop as on the CPU): `small` for a few hundred
# steps on the shipped MNIST digits (JPEG) and spoken words (MP3), each beside the same run on
# the CPU for a few steps, with items/s from each run's `trained ... items/s` line; then, in a
# build with the feature `nccl` (issue #19), `train --dist nccl` on one GPU and, where there
# are two, on two.
#
#   scripts/gpu-check.sh prepare   # on a machine without a GPU: build the check with the
#                                  # CUDA 13.0 nvcc (scripts/cuda-env.sh) into .gpu-check/
#   scripts/gpu-check.sh [ARGS]    # on the GPU machine; ARGS go to the example
#                                  # (--seed N, --batch B, --steps S)
#
# On the GPU machine: with cargo there, it builds the example with that machine's nvcc and
# runs it. Without cargo (the device machines of this project have none, and nothing can be
# fetched there), it runs the binary that `prepare` packed into .gpu-check/ (carry that folder
# along), after compiling crates/tempest-kernels/cuda/tempest.cu with the machine's own nvcc into the PTX it loads
# (TEMPEST_PTX), and after finding the CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC,
# the runtime) among the machine's Python wheels and toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
pack="$root/.gpu-check"

if [ "${1:-}" = "prepare" ]; then
    . scripts/cuda-env.sh
    if [ -z "$TEMPEST_NVCC" ]; then
        echo "gpu-check prepare: no nvcc (see scripts/cuda-env.sh)" >&2
        exit 1
    fi
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    # The dev profile by default: scripts/test.sh has built candle's CUDA kernels for it already
    # (a release build compiles them again, about half an hour on 2 cores), and the workspace
    # optimises candle, gemm and tempest-kernels at opt-level 3 in dev too. `prepare --release`
    # for a release build.
    profile=debug
    if [ "${2:-}" = "--release" ]; then profile=release; fi
    # The NCCL backend too where a libnccl.so is at hand to link (candle's CUDA build links
    # cudarc's libraries): TEMPEST_NCCL_LIB=DIR (e.g. the nvidia-nccl-cu13 wheel's
    # nvidia/nccl/lib), or one the system's linker knows.
    features=cuda
    if [ -n "${TEMPEST_NCCL_LIB:-}" ]; then
        export LIBRARY_PATH="$TEMPEST_NCCL_LIB:${LIBRARY_PATH:-}"; features=cuda,nccl
    elif ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
        features=cuda,nccl
    fi
    echo "building with --features $features"
    cargo build ${2:-} --features "$features" --example gpu_check --example train
    mkdir -p "$pack"
    for b in gpu_check train; do
        rm -f "$pack/$b.gz"
        cp "target/$profile/examples/$b" "$pack/$b"
        strip "$pack/$b" 2>/dev/null || true
        gzip -9 "$pack/$b"
    done
    { "$TEMPEST_NVCC" --version | tail -n1; echo "profile $profile"; git rev-parse HEAD; } >"$pack/BUILD"
    ls -la "$pack"
    exit 0
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader || true
start=$(date +%s)
if command -v cargo >/dev/null 2>&1; then
    . scripts/cuda-env.sh
    [ -n "$TEMPEST_NVCC" ] || { echo "no nvcc on this machine" >&2; exit 1; }
    "$TEMPEST_NVCC" --version | tail -n1
    features=cuda
    ldconfig -p 2>/dev/null | grep -q 'libnccl\.so ' && features=cuda,nccl
    cargo build --release --features "$features" --example gpu_check --example train
    bin="$root/target/release/examples/gpu_check"
    train_bin="$root/target/release/examples/train"
else
    [ -f "$pack/gpu_check.gz" ] || { echo "no cargo here and no $pack/gpu_check.gz: run 'scripts/gpu-check.sh prepare' where cargo is, and carry .gpu-check" >&2; exit 1; }
    echo "no cargo here: running the packed build ($(tr '\n' ' ' <"$pack/BUILD"))"
    bin=/tmp/gpu_check
    gunzip -c "$pack/gpu_check.gz" >"$bin"
    chmod +x "$bin"
    train_bin=/tmp/tempest_train
    if [ -f "$pack/train.gz" ]; then
        gunzip -c "$pack/train.gz" >"$train_bin"
        chmod +x "$train_bin"
    else
        train_bin=""
        echo "no $pack/train.gz (packed before #18): the end-to-end training step will skip"
    fi
    nvcc="$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)"
    if [ -n "$nvcc" ]; then
        "$nvcc" --version | tail -n1
        cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')"
        cap=$(( ${cap:-90} > 90 ? 90 : ${cap:-90} ))
        "$nvcc" --ptx -arch="compute_$cap" -O3 -std=c++17 -o /tmp/tempest.ptx crates/tempest-kernels/cuda/tempest.cu
        export TEMPEST_PTX=/tmp/tempest.ptx
        echo "kernels compiled here for compute_$cap: $TEMPEST_PTX"
    else
        echo "no nvcc here: using the PTX built into the binary"
    fi
    # The libraries the binary needs, from the toolkit and the Python wheels (torch's).
    libs=/tmp/gpu-check-libs
    mkdir -p "$libs"
    dirs="$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib 2>/dev/null || true)"
    for py in python3 /opt/torch/.venv/bin/python3; do
        d="$("$py" -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p)))' 2>/dev/null || true)"
        dirs="$dirs $d"
    done
    for d in $dirs; do [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
    export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
    # cudarc loads NCCL by names that do not include NCCL's own soname (libnccl.so.2, all the
    # nvidia-nccl wheels ship): give it a libnccl.so beside the other links.
    nccl="$(for d in $dirs /usr/lib/x86_64-linux-gnu; do ls "$d"/libnccl.so.2* 2>/dev/null; done | head -n1)"
    [ -n "$nccl" ] && ln -sf "$nccl" "$libs/libnccl.so" && echo "linked libnccl.so -> $nccl"
    # A soname the binary wants but no directory has under that name: link the nearest version.
    for want in $(ldd "$bin" | awk '/not found/ { print $1 }'); do
        stem="${want%%.so*}"
        found="$(for d in $dirs /usr/lib/x86_64-linux-gnu; do ls "$d/$stem".so.* 2>/dev/null; done | head -n1)"
        if [ -n "$found" ]; then ln -sf "$found" "$libs/$want"; echo "linked $want -> $found"; else echo "missing $want" >&2; fi
    done
fi
echo "== ready after $(( $(date +%s) - start )) s; running the check"
set +e
timeout 270 "$bin" "$@"
rc=$?
set -e
echo "== gpu_check exit status $rc after $(( $(date +%s) - start )) s"

# `train` end to end on the GPU and, for a few steps, on the CPU: the same binary, the same
# loop; only --device differs. Each prints `trained N steps on DEVICE: ... items/s`.
train_rc=0
if [ -n "${train_bin:-}" ]; then
    runs=/tmp/gpu-check-train
    rm -rf "$runs"
    set +e
    for what in "mnist data/mnist" "speechcommands data/spoken-words"; do
        set -- $what
        for dev in "cuda 300" "cpu 20"; do
            d="${dev% *}"; steps="${dev#* }"
            echo "== train --layout $1 --preset small --device $d --max-steps $steps"
            timeout 70 "$train_bin" --layout "$1" --input "$2" --preset small --device "$d" \
                --max-steps "$steps" --no-progress --out "$runs/$1-$d" 2>&1 | tail -n 4
            r=${PIPESTATUS[0]}
            [ "$r" = 0 ] || { echo "train on $d exited with $r"; train_rc=1; }
        done
    done
    # NCCL (issue #19): the launcher, the communicator and its all-reduce in every step, with
    # one rank (--gpus 0) and, where there are two GPUs or more, two (--gpus 0,1: items/s of
    # both against one rank above). Skipped by a build without the feature `nccl`.
    if "$train_bin" --data /nonexistent --dist nccl 2>&1 | grep -q 'feature `nccl`'; then
        echo "== NCCL: skipped (the train binary was built without the feature nccl)"
    else
        ngpu="$(nvidia-smi -L 2>/dev/null | wc -l)"
        for gpus in 0 0,1; do
            [ "$gpus" = 0,1 ] && [ "${ngpu:-0}" -lt 2 ] && { echo "== NCCL --gpus 0,1: skipped ($ngpu GPU)"; continue; }
            echo "== train --layout mnist --preset small --dist nccl --gpus $gpus --max-steps 300"
            timeout 90 "$train_bin" --layout mnist --input data/mnist --preset small \
                --dist nccl --gpus "$gpus" --max-steps 300 --no-progress \
                --out "$runs/mnist-nccl-$gpus" 2>&1 | tail -n 4
            r=${PIPESTATUS[0]}
            [ "$r" = 0 ] || { echo "train --dist nccl --gpus $gpus exited with $r"; train_rc=1; }
        done
    fi
    set -e
fi
echo "== done after $(( $(date +%s) - start )) s (gpu_check $rc, train $train_rc)"
[ "$rc" = 0 ] && exit $train_rc
exit $rc
