#!/usr/bin/env bash
# Kills a `train` run with SIGKILL at random moments, resumes it with --resume each time, and
# compares the end with an uninterrupted run of the same command: the weights
# (last/model.safetensors) and the optimiser state (last/optimizer.safetensors) must be
# identical byte for byte (CPU, dropout 0), and metrics.jsonl must hold each epoch once.
#
#   scripts/kill-resume.sh [KILLS] [MAX_DELAY_S]      (defaults: 10 kills, up to 1.5 s apart;
#                                                     fewer when the run finishes first)
#
# Runs the release build of the `train` example (built first) on the shipped spoken words
# (MP3, `tiny`, 12 epochs, the resumable checkpoint also every 2 optimiser steps; kills land
# during steps, evaluations, checkpoint writes and metrics writes).
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-10}"
max_delay="${2:-1.5}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
cargo build --release --example train >/dev/null
bin=target/release/examples/train
work="$(mktemp -d)"
args=(--layout speechcommands --input data/spoken-words --preset tiny --epochs 12
    --checkpoint-every 2 --no-progress)

echo "uninterrupted run"
"$bin" "${args[@]}" --out "$work/whole" >"$work/whole.log" 2>&1

# Resume where a checkpoint exists; a kill before the first one (reading the files, the first
# epoch) leaves nothing to resume, so that run starts again.
restart() {
    if [ -e "$work/killed/last" ] || [ -e "$work/killed/last.old" ]; then
        "$bin" "${args[@]}" --out "$work/killed" --resume >>"$work/killed.log" 2>&1 &
    else
        "$bin" "${args[@]}" --out "$work/killed" --overwrite >>"$work/killed.log" 2>&1 &
    fi
    pid=$!
}

echo "run killed $kills times"
"$bin" "${args[@]}" --out "$work/killed" >"$work/killed.log" 2>&1 &
pid=$!
done_kills=0
while [ "$done_kills" -lt "$kills" ]; do
    # A random delay in [0.1, max_delay] s.
    delay="$(awk -v m="$max_delay" -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.1 + (m - 0.1) * r / 32767 }')"
    sleep "$delay"
    if ! kill -0 "$pid" 2>/dev/null; then
        if wait "$pid" && [ -e "$work/killed/last" ]; then
            echo "  the run finished after $done_kills kills"
            break
        fi
        echo "  the run stopped before kill $((done_kills + 1)) with nothing to resume; starting it again"
        restart
        continue
    fi
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    done_kills=$((done_kills + 1))
    echo "  kill $done_kills after ${delay} s"
    restart
done
wait "$pid" || true
# Finish a run whose last kill left it stopped.
"$bin" "${args[@]}" --out "$work/killed" --resume >>"$work/killed.log" 2>&1

status=0
for f in model.safetensors optimizer.safetensors; do
    if cmp -s "$work/whole/last/$f" "$work/killed/last/$f"; then
        echo "last/$f: identical"
    else
        echo "last/$f: DIFFERS"
        status=1
    fi
done
epochs_whole="$(grep -o '"epoch":[0-9]*' "$work/whole/metrics.jsonl" | tr '\n' ' ')"
epochs_killed="$(grep -o '"epoch":[0-9]*' "$work/killed/metrics.jsonl" | tr '\n' ' ')"
if [ "$epochs_whole" = "$epochs_killed" ]; then
    echo "metrics.jsonl: the same epochs, each once ($epochs_killed)"
else
    echo "metrics.jsonl: DIFFERS (uninterrupted: $epochs_whole; killed: $epochs_killed)"
    status=1
fi
tail -n 1 "$work/whole.log" "$work/killed.log"
rm -rf "$work"
exit $status
