#!/usr/bin/env bash
# Builds the instrument-family development set: single notes of the 128 General MIDI programs
# rendered by fluidsynth with the TimGM6mb SoundFont (Debian timgm6mb-soundfont), labelled by
# GM family (program // 8: 16 classes), 2.5 s each (note held 2.0 s), 16 kHz mono 16-bit PCM
# WAV. Nothing is downloaded except Debian packages.
#
#   scripts/devsets/instruments.sh OUT_DIR
#
# Layout: OUT/{train,val,test}/<family>/p<program>_<gm name>_n<note>_v<velocity>.wav,
# OUT/manifest.csv (path,label,split,source; source = the program, e.g. p040),
# OUT/dropped.csv, OUT/groups.txt, OUT/README.md.
# Notes: 12 per program, 4 semitones apart from a family's (or program's) lowest note, at
# velocities 64 and 110; notes outside a preset's key range are not rendered.
# The split is by program (fixed lists in gm_plan.py): programs that play the same samples are
# grouped (read from the SoundFont's preset -> sample mapping) and no group straddles two
# splits. Clips are dropped when near-silent (sox: maximum amplitude < 0.01, -40 dBFS).
# Needs root (or sudo) only when packages are missing. Deterministic. JOBS (default 2) clips
# are rendered at once.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
start=$(date +%s)
jobs=${JOBS:-2}
here="$(cd "$(dirname "$0")" && pwd)"
sf2=/usr/share/sounds/sf2/TimGM6mb.sf2

# shellcheck source=../lib/apt.sh
. "$here/../lib/apt.sh"
# shellcheck disable=SC2046 # one package name per word
apt_install $(missing_debs fluidsynth timgm6mb-soundfont sox python3)

mkdir -p "$1"
out="$(cd "$1" && pwd)"
rm -rf "$out/train" "$out/val" "$out/test" "$out/.work"
mkdir -p "$out/.work"
export out sf2

/usr/bin/python3 "$here/gm_plan.py" "$sf2" "$out/.work"
cp "$out/.work/groups.txt" "$out/groups.txt"

# render MIDI WAV: one clip. Prints "keep,<wav>,<max>,<rms>" or "drop,<wav>,<max>,<rms>".
render() {
    local mid=$1 rel=$2
    local tmp="$out/.work/tmp.$$"
    mkdir -p "$tmp" "$(dirname "$out/$rel")"
    # 44.1 kHz synthesis, no reverb or chorus, gain 1.0; sox downsamples to 16 kHz mono and
    # cuts or pads to exactly 2.5 s.
    fluidsynth -ni -q -R 0 -C 0 -g 1.0 -r 44100 -F "$tmp/raw.wav" "$sf2" "$mid" > /dev/null 2>&1
    sox -V1 -R "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/clip.wav" pad 0 2.5 trim 0 2.5
    local stats mx rms
    stats=$(sox "$tmp/clip.wav" -n stat 2>&1)
    mx=$(awk '/^Maximum amplitude/{print $3}' <<< "$stats")
    rms=$(awk '/^RMS +amplitude/{print $3}' <<< "$stats")
    if awk -v m="$mx" -v r="$rms" 'BEGIN{exit !(m < 0.01)}'; then
        echo "drop,$rel,$mx,$rms"
    else
        mv "$tmp/clip.wav" "$out/$rel"
        echo "keep,$rel,$mx,$rms"
    fi
    rm -rf "$tmp"
}
export -f render

awk -F, 'NR > 1 {print $7, $8}' "$out/.work/plan.csv" \
    | xargs -P "$jobs" -n 2 bash -c 'render "$@"' _ > "$out/.work/results"

/usr/bin/python3 - "$out" <<'EOF'
import csv, os, sys
out = sys.argv[1]
plan = {r["wav"]: r for r in csv.DictReader(open(os.path.join(out, ".work", "plan.csv")))}
res = {}
for line in open(os.path.join(out, ".work", "results")):
    kind, rel, mx, rms = line.strip().split(",")
    res[rel] = (kind, mx, rms)
assert set(res) == set(plan), "some clips were not rendered"
with open(os.path.join(out, "manifest.csv"), "w", newline="") as f, \
        open(os.path.join(out, "dropped.csv"), "w", newline="") as g:
    m = csv.writer(f, lineterminator="\n")
    d = csv.writer(g, lineterminator="\n")
    m.writerow(["path", "label", "split", "source"])
    d.writerow(["path", "label", "split", "source", "reason"])
    for rel in sorted(plan):
        r = plan[rel]
        kind, mx, rms = res[rel]
        src = f"p{int(r['program']):03d}"
        if kind == "keep":
            m.writerow([rel, r["family"], r["split"], src])
        else:
            d.writerow([rel, r["family"], r["split"], src, f"near-silent (max {mx} RMS {rms})"])
EOF
rm -rf "$out/.work"

count() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/manifest.csv" | wc -l; }
ndrop() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/dropped.csv" | wc -l; }
programs() { awk -F, -v s="$1" 'NR > 1 && $3 == s {print $4}' "$out/manifest.csv" | sort -u | wc -l; }
classes() { awk -F, -v s="$1" 'NR > 1 && $3 == s {print $2}' "$out/manifest.csv" | sort -u | wc -l; }
secs=$(( $(date +%s) - start ))
{
    cat <<EOF
# Instrument families (development set)

Single notes of the 128 General MIDI programs (bank 0) rendered by fluidsynth
$(dpkg-query -W -f='${Version}' fluidsynth) with the TimGM6mb SoundFont (Debian timgm6mb-soundfont
$(dpkg-query -W -f='${Version}' timgm6mb-soundfont)), labelled by GM family (program // 8): piano,
chromatic_percussion, organ, guitar, bass, strings, ensemble, brass, reed, pipe, synth_lead,
synth_pad, synth_effects, ethnic, percussive, sound_effects.

Every clip: one note held 2.0 s of a 2.5 s clip, 16 kHz mono 16-bit PCM WAV (synthesised at
44.1 kHz without reverb or chorus, gain 1.0, downsampled by sox $(dpkg-query -W -f='${Version}' sox)).
12 notes per program, 4 semitones apart from the family's lowest note (most families 40-84),
at velocities 64 and 110; notes outside a preset's key range are not rendered.
Made by \`scripts/devsets/instruments.sh\` of tempest-rs (Debian 12).

Split by program (lists in scripts/devsets/gm_plan.py); programs that play the same samples are
grouped from the SoundFont's preset -> sample mapping and kept on one side (groups.txt). In
TimGM6mb the eight synth pads play the same samples as programs of other families, so they all
train: synth_pad has no val or test clips.

| split | programs | classes | clips | dropped |
|---|---:|---:|---:|---:|
EOF
    for s in train val test; do
        echo "| $s | $(programs "$s") | $(classes "$s") | $(count "$s") | $(ndrop "$s") |"
    done
    cat <<EOF

Dropped clips (dropped.csv): near-silent (maximum amplitude < 0.01, -40 dBFS; a short sound in a quiet clip, such as one bird chirp, is kept).

manifest.csv: path (relative to this folder), label (the family), split, source (the program).

Licence of the SoundFont: see /usr/share/doc/timgm6mb-soundfont/copyright and docs/data.md
of tempest-rs.
EOF
} > "$out/README.md"

echo "instruments: $out ($secs s)"
for s in train val test; do
    echo "  $s: $(count "$s") clips from $(programs "$s") programs, $(classes "$s") classes, $(ndrop "$s") dropped"
done
