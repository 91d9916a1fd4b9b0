#!/usr/bin/env bash
# Runs the block-parsing bench (cff-blocks' own: no candle to compile) and prints its table.
#
#   scripts/bench.sh                  # every group
#   scripts/bench.sh mp3-low          # a filter: benchmarks whose id matches the regex
#   scripts/bench.sh -- --save-baseline main   # options after -- go to criterion
#
# Threads are fixed so that numbers compare across machines and runs: nothing in the timed
# code is multi-threaded today (jpeg-decoder is built without its rayon feature), but rayon
# pools in dependencies size themselves from this variable.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=2
cargo bench -p cff-blocks --bench bench_main "$@"
python3 scripts/criterion_table.py "${CARGO_TARGET_DIR:-target}/criterion"
