#!/usr/bin/env bash
# Builds the synthetic spoken-word set: 10 Speech-Commands-style words spoken by 16 synthetic
# speakers (4 espeak-ng voices × 4 voice variants), 1 s each at 16 kHz mono, as MP3.
# Tools (Debian packages): espeak-ng 1.51, sox 14.4.2, lame 3.100.
#
#   data/spoken-words/make.sh data/spoken-words
#
# Layout as in Speech Commands v2: one folder per word, files <speaker>_nohash_0.mp3, and
# validation_list.txt / testing_list.txt naming the held-out files (speakers 12–13 and 14–15).
set -euo pipefail
out="$(cd "$1" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
words=(yes no up down left right on off stop go)
voices=(en-us en-gb en-gb-scotland en-029)
variants=(m1 m3 f1 f4)
: > "$out/validation_list.txt"
: > "$out/testing_list.txt"
for w in "${words[@]}"; do
    mkdir -p "$out/$w"
    s=0
    for v in "${voices[@]}"; do
        for var in "${variants[@]}"; do
            speaker=$(printf 'spk%02d' "$s")
            espeak-ng -v "$v+$var" -s $((140 + 10 * (s % 4))) -w "$tmp/raw.wav" "$w"
            # 16 kHz mono, silence trimmed at the start, padded or cut to exactly 1 s.
            sox -V1 -R "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/clip.wav" \
                silence 1 0.01 1% pad 0.1 1 trim 0 1
            lame --quiet -b 32 "$tmp/clip.wav" "$out/$w/${speaker}_nohash_0.mp3"
            if [ "$s" -ge 14 ]; then
                echo "$w/${speaker}_nohash_0.mp3" >> "$out/testing_list.txt"
            elif [ "$s" -ge 12 ]; then
                echo "$w/${speaker}_nohash_0.mp3" >> "$out/validation_list.txt"
            fi
            s=$((s + 1))
        done
    done
done
