#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while, seeded with the repository's fixtures and crashtest
# files, with memory limits, and prints libFuzzer's last status line per target (executions,
# coverage, exec/s). Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly && cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s; all targets)
#
# A crash stops that target and leaves the input in fuzz/artifacts/<target>/; add it to
# crates/cff-blocks/tests/crashtest/ with its expected error once fixed (docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(mp3 ogg_opus jpeg any tokenize)
fx=crates/cff-blocks/tests
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    # Seeds: the fixtures and crashtest files of the formats the target reads.
    case "$t" in
        mp3) dirs="$fx/fixtures/mp3 $fx/crashtest/mp3" ;;
        ogg_opus) dirs="$fx/fixtures/opus $fx/crashtest/opus" ;;
        jpeg) dirs="$fx/fixtures/jpeg $fx/crashtest/jpeg" ;;
        *) dirs="$fx/fixtures/mp3 $fx/fixtures/opus $fx/fixtures/jpeg" ;;
    esac
    for d in $dirs; do
        find "$d" -maxdepth 1 -type f ! -name '*.py' ! -name '*.md' ! -name '*.txt' \
            -size -1024k -exec cp -n {} "$corpus/" \;
    done
    echo "== $t: $(ls "$corpus" | wc -l) inputs in the corpus, $secs s"
    # The readers' own limits are tighter (fuzz_targets/common.rs); these catch what slips.
    set +e
    cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"fuzz/$t.log" 2>&1
    rc=$?
    set -e
    { grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "fuzz/$t.log" || true; } | tail -n 1
    { grep -E '^Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "fuzz/$t.log" || true; }
    [ "$rc" = 0 ] || { echo "$t: exit $rc (see fuzz/$t.log and fuzz/artifacts/$t/)"; }
done
