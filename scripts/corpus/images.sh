#!/usr/bin/env bash
# An unlabelled image corpus for pretraining (docs/pretraining.md, issue #22): raster images
# from Debian packages (icon themes, desktop backgrounds, game graphics) as small grayscale
# pictures, prepared by the project's own `prepare` into JPEG variants, with a manifest of
# where every image came from and under which licence.
#
#   scripts/corpus/images.sh OUT_DIR
#
# Steps:
# 1. `apt-get download` each package of PACKAGES (nothing installed: `dpkg-deb -x` into
#    OUT/.work/<package>); its licence from usr/share/doc/<package>/copyright in the .deb.
# 2. scripts/corpus/images.py: per image name the largest raster file (.png .jpg .jpeg .gif
#    .bmp .xpm .tga .webp; an icon theme has each icon at several sizes), at least MIN_SIDE
#    (default 16) pixels a side, fitted into SIZE × SIZE (default 28, MNIST's) on black and
#    made 8-bit gray by ffmpeg; images without contrast and exact duplicates dropped; at most
#    MAX_IMAGES (default 2000) per package.
# 3. `prepare --layout folder` encodes OUT/images/<package>/*.png into VARIANTS (default
#    jpeg:75x2r1, the image recipe's) under OUT/prepared.
# Writes OUT/corpus.csv (package,licence,source,image,width,height), OUT/skipped.csv
# (package,file,reason), OUT/README.md (the counts printed at the end).
#
# No labelled development set is a Debian package (MNIST ships in data/mnist); a package named
# as a development set's source (see scripts/corpus/audio.sh) is refused all the same.
# Needs apt, python3, ffmpeg (installed when missing, as root or with sudo) and cargo (or
# PREPARE, a built `prepare` binary). Environment: PACKAGES, VARIANTS, SIZE, MIN_SIDE,
# MAX_IMAGES, THREADS.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
start=$(date +%s)
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
packages=${PACKAGES:-"tango-icon-theme gnome-icon-theme oxygen-icon-theme desktop-base pingus-data frozen-bubble-data"}
variants=${VARIANTS:-jpeg:75x2r1}
size=${SIZE:-28}
min_side=${MIN_SIDE:-16}
max_images=${MAX_IMAGES:-2000}
threads=${THREADS:-1}

# shellcheck source=../lib/apt.sh
. "$here/../lib/apt.sh"
command -v ffmpeg >/dev/null || apt_install ffmpeg

mkdir -p "$1"
out="$(cd "$1" && pwd)"
work="$out/.work"
rm -rf "$out/images" "$out/prepared" "$work"
mkdir -p "$out/images" "$work"
echo "package,licence,source,image,width,height" >"$out/corpus.csv"
echo "package,file,reason" >"$out/skipped.csv"

. "$here/common.sh"

for pkg in $packages; do
    unpack "$pkg" || continue
    mkdir -p "$out/images/$pkg"
    python3 "$here/images.py" --package "$pkg" --licence "$lic" --root "$root" \
        --images "$out/images/$pkg" --corpus "$out/corpus.csv" --skipped "$out/skipped.csv" \
        --size "$size" --min-side "$min_side" --max-images "$max_images"
    rmdir "$out/images/$pkg" 2>/dev/null || true
done

count=$(($(wc -l <"$out/corpus.csv") - 1))
if [ "$count" -eq 0 ]; then
    echo "no images: nothing to prepare" >&2
    exit 1
fi

echo "== prepare: $count images into $variants"
if [ -n "${PREPARE:-}" ]; then
    prepare=("$PREPARE")
else
    prepare=(cargo run --release --features mp3,opus --example prepare --)
fi
(cd "$repo" && RAYON_NUM_THREADS="$threads" "${prepare[@]}" \
    --layout folder --input "$out/images" --output "$out/prepared" --variants "$variants" \
    --threads "$threads" --no-progress) | tee "$work/prepare.log"

summary=$(python3 - "$out" <<'PY'
import csv, collections, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/corpus.csv")))
skipped = list(csv.DictReader(open(f"{out}/skipped.csv")))
per = collections.OrderedDict()
for r in rows:
    p = per.setdefault(r["package"], {"n": 0, "licence": r["licence"]})
    p["n"] += 1
print("| package | licence (copyright file) | images |")
print("|---|---|---:|")
for k, p in per.items():
    print(f"| {k} | {p['licence']} | {p['n']} |")
print(f"| **total** | | {len(rows)} |")
print()
reasons = collections.Counter()
for r in skipped:
    why = r["reason"]
    for cut in (" (", ": "):
        why = why.split(cut)[0]
    reasons[why] += 1
print(f"images used: {len(rows)}; skipped entries: {len(skipped)}")
for why, n in reasons.most_common():
    print(f"  {n:6d}  {why}")
PY
)
took=$(($(date +%s) - start))
{
    echo "# Unlabelled image corpus"
    echo
    echo "Made by \`scripts/corpus/images.sh\` on $(date -u +%Y-%m-%d) in ${took} s: ${size}x${size} gray,"
    echo "sides of at least ${min_side} px, at most ${max_images} images per package, prepared into ${variants}."
    echo
    echo "$summary"
} >"$out/README.md"
echo "$summary"
echo "corpus: $out/prepared (manifest.csv), sources in $out/corpus.csv, skipped in $out/skipped.csv; $took s"
rm -rf "$work"
