#!/usr/bin/env bash
# Builds the instrument-family set with a second-SoundFont validation split: the training and
# test clips of scripts/devsets/instruments.sh (TimGM6mb) as they are, and a validation split
# rendered from another SoundFont, MuseScore General (Debian musescore-general-soundfont), for
# every program that is not a test program (99 of 128: 16 families, six programs per family on
# average instead of the first set's one), three notes (low, middle, high of the first set's
# twelve) at its two velocities. Other samples of the same instruments: the split measures
# what the test split measures (instruments the model has not heard) with several programs
# per family, so that levers can be chosen on it. Nothing is downloaded except Debian packages.
#
#   scripts/devsets/instruments-val2.sh INSTRUMENTS_DIR OUT_DIR
#
# INSTRUMENTS_DIR: the output of scripts/devsets/instruments.sh. OUT_DIR/{train,test} are hard
# links to its clips (copies across file systems), OUT_DIR/val is new; OUT_DIR/manifest.csv
# (path,label,split,source; source = the program and SoundFont, e.g. p040 or p040-msg),
# OUT_DIR/dropped.csv, OUT_DIR/README.md. The first set's validation clips are not used (its
# training set is unchanged). Deterministic. JOBS (default 2) programs are rendered at once.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 INSTRUMENTS_DIR OUT_DIR" >&2
    exit 2
fi
start=$(date +%s)
jobs=${JOBS:-2}
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$1" && pwd)"
sf3=/usr/share/sounds/sf3/MuseScore_General.sf3
for f in manifest.csv train test; do
    [ -e "$src/$f" ] || { echo "$0: $src/$f not found (run instruments.sh first)" >&2; exit 1; }
done

# shellcheck source=../lib/apt.sh
. "$here/../lib/apt.sh"
# shellcheck disable=SC2046 # one package name per word
apt_install $(missing_debs fluidsynth musescore-general-soundfont sox python3)

mkdir -p "$2"
out="$(cd "$2" && pwd)"
[ "$out" != "$src" ] || { echo "$0: OUT_DIR must differ from INSTRUMENTS_DIR" >&2; exit 2; }
rm -rf "$out/train" "$out/val" "$out/test" "$out/.work"
mkdir -p "$out/.work/wav"
cp -al "$src/train" "$src/test" "$out/" 2>/dev/null || cp -a "$src/train" "$src/test" "$out/"
export out sf3

/usr/bin/python3 "$here/gm_second.py" plan "$out/.work"

# One fluidsynth call per program (44.1 kHz, no reverb or chorus, gain 1.0, as instruments.sh),
# sox to 16 kHz mono 16-bit.
render() {
    local p=$1
    fluidsynth -ni -q -R 0 -C 0 -g 1.0 -r 44100 -F "$out/.work/$p.raw.wav" "$sf3" \
        "$out/.work/midi/$p.mid" > /dev/null 2>&1
    sox -V1 -R "$out/.work/$p.raw.wav" -r 16000 -c 1 -b 16 "$out/.work/wav/$p.wav"
    rm -f "$out/.work/$p.raw.wav"
}
export -f render
ls "$out/.work/midi" | sed 's/\.mid$//' | xargs -P "$jobs" -n 1 bash -c 'render "$@"' _

/usr/bin/python3 "$here/gm_second.py" cut "$out/.work" "$out" > "$out/.work/results"

/usr/bin/python3 - "$src" "$out" <<'EOF'
import csv, os, sys
src, out = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "manifest.csv"), "w", newline="") as f, \
        open(os.path.join(out, "dropped.csv"), "w", newline="") as g:
    m = csv.writer(f, lineterminator="\n")
    d = csv.writer(g, lineterminator="\n")
    m.writerow(["path", "label", "split", "source"])
    d.writerow(["path", "label", "split", "source", "reason"])
    for r in csv.DictReader(open(os.path.join(src, "manifest.csv"))):
        if r["split"] != "val":
            m.writerow([r["path"], r["label"], r["split"], r["source"]])
    for line in open(os.path.join(out, ".work", "results")):
        kind, rel, fam, prog, mx = line.strip().split(",")
        if kind == "keep":
            m.writerow([rel, fam, "val", prog + "-msg"])
        else:
            d.writerow([rel, fam, "val", prog + "-msg", f"near-silent (max {mx})"])
EOF
rm -rf "$out/.work"

count() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/manifest.csv" | wc -l; }
ndrop() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/dropped.csv" | wc -l; }
programs() { awk -F, -v s="$1" 'NR > 1 && $3 == s {print $4}' "$out/manifest.csv" | sort -u | wc -l; }
classes() { awk -F, -v s="$1" 'NR > 1 && $3 == s {print $2}' "$out/manifest.csv" | sort -u | wc -l; }
secs=$(( $(date +%s) - start ))
{
    cat <<EOF
# Instrument families with a second-SoundFont validation split (development set)

Training and test clips: those of $src (scripts/devsets/instruments.sh, TimGM6mb), unchanged.
Validation clips: the 99 General MIDI programs that are not test programs, rendered by
fluidsynth $(dpkg-query -W -f='${Version}' fluidsynth) from MuseScore General (Debian
musescore-general-soundfont $(dpkg-query -W -f='${Version}' musescore-general-soundfont)):
notes 3, 7 and 11 of the first set's twelve per program at velocities 64 and 110, each held
2.0 s of a 2.5 s clip, 16 kHz mono 16-bit PCM WAV, near-silent clips (maximum amplitude
< 0.01) dropped. Other samples of the programs: every validation instrument is unheard in
training.

| split | programs | classes | clips | dropped |
|---|---:|---:|---:|---:|
| train | $(programs train) | $(classes train) | $(count train) | - |
| val | $(programs val) | $(classes val) | $(count val) | $(ndrop val) |
| test | $(programs test) | $(classes test) | $(count test) | - |

Built by \`scripts/devsets/instruments-val2.sh\` in ${secs} s (JOBS=$jobs).
Licences of the SoundFonts: /usr/share/doc/timgm6mb-soundfont/copyright,
/usr/share/doc/musescore-general-soundfont/copyright, and docs/data.md of tempest-rs.
EOF
} > "$out/README.md"
cat "$out/README.md"
