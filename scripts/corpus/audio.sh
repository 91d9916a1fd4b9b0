#!/usr/bin/env bash
# An unlabelled audio corpus for pretraining (docs/pretraining.md, issue #22): real sound and
# music from Debian packages, cut into short clips and prepared by the project's own `prepare`
# into MP3 variants, with a manifest of where every clip came from and under which licence.
#
#   scripts/corpus/audio.sh OUT_DIR
#
# Steps:
# 1. `apt-get download` each package of PACKAGES (no installation: the .deb files are
#    unpacked with `dpkg-deb -x` into OUT/.work/<package>); its licence is read from
#    usr/share/doc/<package>/copyright inside the .deb.
# 2. Every file named as sound (.ogg .oga .opus .wav .flac .mp3 .spx .au .aif(f), tracker
#    modules .mod .xm .it .s3m; others are listed as skipped unread) that ffprobe reads as
#    audio is decoded by ffmpeg to 16 kHz mono 16-bit samples and cut into clips of
#    CLIP_SECONDS (default 3) by scripts/corpus/clips.py; a last piece shorter than
#    MIN_SECONDS (default 1) is dropped, as are near-silent clips (peak below 0.01 of full
#    scale, −40 dBFS). At most PACKAGE_MINUTES (default 30) minutes are kept per package
#    (files taken in name order), so that one large package does not make the corpus.
# 3. `prepare --layout folder` encodes the clips (OUT/clips/<package>/<clip>.wav) into VARIANTS
#    (default the spoken-word recipe's six MP3 bitrates) under OUT/prepared, with its
#    manifest.csv (the package stands as the "class"; pretraining does not read it).
# Writes OUT/corpus.csv (package,licence,source,clip,seconds), OUT/skipped.csv
# (package,file,reason) and OUT/README.md (the counts printed at the end).
#
# The labelled development sets' sources are never used: a package whose name matches
# EXCLUDE (mbrola*, festival*, festvox*, timgm6mb-soundfont, musescore-general-soundfont,
# fluid-soundfont*: the spoken words' voices and the instruments' SoundFonts) is refused even
# when PACKAGES names it.
#
# Needs apt (Debian mirrors), python3, ffmpeg and sox (installed when missing, as root or with sudo) and
# cargo (for `prepare`, built with --features mp3,opus). Deterministic for the same package
# versions. Environment: PACKAGES, VARIANTS, CLIP_SECONDS, MIN_SECONDS, PACKAGE_MINUTES,
# THREADS (prepare's encoding threads, default 1), PREPARE (a built `prepare` binary to use
# instead of `cargo run --release --features mp3,opus --example prepare`).
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
start=$(date +%s)
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
packages=${PACKAGES:-"sound-theme-freedesktop oxygen-sounds chromium-bsu-data pingus-data frozen-bubble-data extremetuxracer-data neverball-common warzone2100-music"}
variants=${VARIANTS:-mp3:16,mp3:20,mp3:24,mp3:26,mp3:32,mp3:40}
clip=${CLIP_SECONDS:-3}
min=${MIN_SECONDS:-1}
package_minutes=${PACKAGE_MINUTES:-30}
threads=${THREADS:-1}

missing=()
for p in ffmpeg sox; do
    command -v "$p" >/dev/null || missing+=("$p")
done
# shellcheck source=../lib/apt.sh
. "$here/../lib/apt.sh"
apt_install "${missing[@]}"

mkdir -p "$1"
out="$(cd "$1" && pwd)"
work="$out/.work"
rm -rf "$out/clips" "$out/prepared" "$work"
mkdir -p "$out/clips" "$work"
echo "package,licence,source,clip,seconds" >"$out/corpus.csv"
echo "package,file,reason" >"$out/skipped.csv"

. "$here/common.sh"

for pkg in $packages; do
    unpack "$pkg" || continue
    mkdir -p "$out/clips/$pkg"
    python3 "$here/clips.py" --package "$pkg" --licence "$lic" --root "$root" \
        --clips "$out/clips/$pkg" --corpus "$out/corpus.csv" --skipped "$out/skipped.csv" \
        --clip-seconds "$clip" --min-seconds "$min" --package-minutes "$package_minutes"
    rmdir "$out/clips/$pkg" 2>/dev/null || true
done

clips=$(($(wc -l <"$out/corpus.csv") - 1))
if [ "$clips" -eq 0 ]; then
    echo "no clips: nothing to prepare" >&2
    exit 1
fi

echo "== prepare: $clips clips into $variants"
if [ -n "${PREPARE:-}" ]; then
    prepare=("$PREPARE")
else
    prepare=(cargo run --release --features mp3,opus --example prepare --)
fi
(cd "$repo" && RAYON_NUM_THREADS="$threads" "${prepare[@]}" \
    --layout folder --input "$out/clips" --output "$out/prepared" --variants "$variants" \
    --threads "$threads" --no-progress) | tee "$work/prepare.log"

# The counts: clips and seconds per package, skipped files by reason, total hours.
summary=$(python3 - "$out" <<'PY'
import csv, collections, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/corpus.csv")))
skipped = list(csv.DictReader(open(f"{out}/skipped.csv")))
per = collections.OrderedDict()
for r in rows:
    p = per.setdefault(r["package"], {"clips": 0, "s": 0.0, "licence": r["licence"], "files": set()})
    p["clips"] += 1
    p["s"] += float(r["seconds"])
    p["files"].add(r["source"])
print("| package | licence (copyright file) | source files | clips | minutes |")
print("|---|---|---:|---:|---:|")
for k, p in per.items():
    print(f"| {k} | {p['licence']} | {len(p['files'])} | {p['clips']} | {p['s'] / 60:.1f} |")
total = sum(p["s"] for p in per.values())
files = sum(len(p["files"]) for p in per.values())
print(f"| **total** | | {files} | {len(rows)} | {total / 60:.1f} ({total / 3600:.2f} h) |")
print()
reasons = collections.Counter()
for r in skipped:
    why = r["reason"]
    for cut in (" (", ": "):
        why = why.split(cut)[0]
    reasons[why] += 1
print(f"source files used: {files}; skipped entries: {len(skipped)}")
for why, n in reasons.most_common():
    print(f"  {n:6d}  {why}")
PY
)
took=$(($(date +%s) - start))
{
    echo "# Unlabelled audio corpus"
    echo
    echo "Made by \`scripts/corpus/audio.sh\` on $(date -u +%Y-%m-%d) in ${took} s: clips of ${clip} s"
    echo "(at least ${min} s), at most ${package_minutes} minutes per package, prepared into ${variants}."
    echo
    echo "$summary"
} >"$out/README.md"
echo "$summary"
echo "corpus: $out/prepared (manifest.csv), sources in $out/corpus.csv, skipped in $out/skipped.csv; $took s"
rm -rf "$work"
