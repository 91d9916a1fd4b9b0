#!/usr/bin/env bash
# Data-parallel training over MPI on two ranks (docs/distributed.md): builds tempest-train's
# `mpi_check` example with the feature `mpi` and runs it under `mpirun -np 2`:
# - train: two ranks with batches of 4 reach one rank's weights with batches of 8; every item
#   once per epoch across the ranks; stopped + resumed equals uninterrupted, and a two-rank run
#   does not resume on one rank;
# - pretrain: two ranks pretraining (masked block modelling) with batches of 4 reach one rank's
#   weights with batches of 8; stopped + resumed equals uninterrupted; then the `pretrain`
#   example itself on two ranks (`--dist mpi`), rank 0 alone writing the run;
# - fail: a rank that fails ends the job (non-zero exit) instead of leaving the other waiting;
# - wait: a rank killed with SIGKILL ends the job within seconds.
# Needs Open MPI (Debian: libopenmpi-dev openmpi-bin) and libclang-dev; `scripts/test.sh`
# runs this where `mpirun` is found. Takes about a minute and a half once built (95 s measured on a loaded 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
# Open MPI's shared-memory transport copies between processes with process_vm_readv where it
# can, which containers without ptrace rights refuse (the job then dies on large messages):
# copy through shared memory instead, which works everywhere.
export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
target="${CARGO_TARGET_DIR:-target}"
cargo build -p tempest-train --features mpi --example mpi_check
cargo build --features mpi --example pretrain
bin="$target/debug/examples/mpi_check"
pretrain_bin="$target/debug/examples/pretrain"
mpirun=(mpirun -np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "mpi-check: train"
timeout 600 "${mpirun[@]}" "$bin" train "$scratch/train"

echo "mpi-check: pretrain"
timeout 600 "${mpirun[@]}" "$bin" pretrain "$scratch/pretrain"

echo "mpi-check: the pretrain example on two ranks"
run="$scratch/pretrain-example"
timeout 600 "${mpirun[@]}" "$pretrain_bin" --dist mpi --input data/spoken-words --out "$run" \
    --preset tiny --batch 4 --epochs 1 --workers 1 --parallel 1 --no-progress \
    >"$scratch/pretrain-example.log" 2>&1 || { cat "$scratch/pretrain-example.log"; echo "mpi-check: pretrain --dist mpi failed"; exit 1; }
# One epoch of the 160 clips at 8 a step: 20 steps; rank 0's report alone.
if ! grep -q "pretrained 20 steps" "$scratch/pretrain-example.log" \
    || [ "$(grep -c "pretrained .* steps" "$scratch/pretrain-example.log")" != 1 ] \
    || ! grep -q '"ranks":2' "$run/metrics.jsonl" || ! [ -s "$run/last/model.safetensors" ]; then
    cat "$scratch/pretrain-example.log"; echo "mpi-check: pretrain --dist mpi did not write its run as expected"; exit 1
fi
status=0
"$pretrain_bin" --input data/spoken-words --out "$run" --preset tiny --batch 4 --epochs 2 \
    --workers 1 --no-progress --resume >"$scratch/resume1.log" 2>&1 || status=$?
if [ "$status" = 0 ] || ! grep -q "trained on 2 rank(s)" "$scratch/resume1.log"; then
    cat "$scratch/resume1.log"; echo "mpi-check: one process resumed a two-rank pretraining"; exit 1
fi
echo "  2 ranks: 20 steps, rank 0's metrics and checkpoint; one process refuses to resume it"

echo "mpi-check: a failing rank ends the job"
start=$(date +%s)
status=0
timeout 60 "${mpirun[@]}" "$bin" fail "$scratch/fail" >"$scratch/fail.log" 2>&1 || status=$?
if [ "$status" = 0 ] || [ "$status" = 124 ] || ! grep -q "rank 1 fails on purpose" "$scratch/fail.log"; then
    cat "$scratch/fail.log"; echo "mpi-check: the failing rank's job hung or lost its error (status $status)"; exit 1
fi
echo "  exit status $status after $(( $(date +%s) - start )) s, with rank 1's error"

echo "mpi-check: a killed rank ends the job"
timeout 90 "${mpirun[@]}" "$bin" wait "$scratch/wait" >"$scratch/wait.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
    [ -s "$scratch/wait/pid.1" ] && [ -s "$scratch/wait/pid.0" ] && break
    sleep 0.1
done
if ! [ -s "$scratch/wait/pid.1" ]; then
    cat "$scratch/wait.log"; echo "mpi-check: the ranks did not start"; kill "$job" || true; exit 1
fi
sleep 1
start=$(date +%s.%N)
kill -KILL "$(cat "$scratch/wait/pid.1")"
status=0
wait "$job" || status=$?
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$status" = 0 ] || [ "$status" = 124 ] || awk -v t="$took" 'BEGIN { exit !(t > 10) }'; then
    cat "$scratch/wait.log"
    echo "mpi-check: after rank 1 was killed mpirun exited with $status after $took s (want non-zero within 10 s)"
    exit 1
fi
echo "  mpirun exited with status $status $took s after rank 1 was killed"
echo "mpi-check: ok"
