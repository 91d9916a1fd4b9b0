#!/usr/bin/env bash
# Builds the spoken-words development set: 35 Speech-Commands v2 words spoken in English by
# 23 voices made from real speakers' recordings — 20 MBROLA diphone voices (4 native English,
# 16 with a foreign accent) driven by espeak-ng, and 3 Festival voices (kal, ked: diphone;
# slt: HTS trained on CMU ARCTIC slt) — 1 s each, 16 kHz mono 16-bit PCM WAV.
# Nothing is downloaded except Debian packages.
#
#   scripts/devsets/spoken-words.sh OUT_DIR
#
# Layout: OUT/{train,val,test}/<word>/<voice>_s<speed>_p<pitch>.wav, OUT/manifest.csv
# (path,label,split,source; source = the voice), OUT/dropped.csv, OUT/README.md.
# The split is by voice (fixed lists below): no voice is in two splits.
# Training voices: 4 renditions per word (speed × pitch picked from a 3 × 3 grid, fixed rule);
# val/test voices: 2 renditions at the default pitch (speeds 140 and 175, espeak-ng's default).
# Clips are dropped when MBROLA reports a missing diphone (the word is not fully spoken) or when
# the clip is near-silent (sox: maximum amplitude < 0.05 or RMS < 0.005); dropped.csv says why.
# Needs root (or sudo) only when packages are missing. Deterministic: same packages → same files.
# JOBS (default 2) is the number of voices rendered at once.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
start=$(date +%s)
jobs=${JOBS:-2}

words=(yes no up down left right on off stop go zero one two three four five six seven eight
       nine bed bird cat dog happy house marvin sheila tree wow backward forward follow learn
       visual)
# espeak-ng voice names (`espeak-ng --voices=mb`): the -en variants speak English with the
# voice's own (foreign) diphones.
test_voices=(mb-us2 mb-de4-en mb-fr4-en mb-hu1-en)
val_voices=(mb-en1 mb-de2-en mb-sw2-en)
train_voices=(mb-us1 mb-us3 mb-af1-en mb-de1-en mb-de3-en mb-de5-en mb-de6-en mb-fr1-en
              mb-gr2-en mb-nl2-en mb-pl1-en mb-ro1-en mb-sw1-en
              fest-kal fest-ked fest-slt)

# ---------------------------------------------------------------------------------------------
# Packages. The MBROLA voices are in Debian's contrib (mbrola) and non-free (voices) components,
# which the system's apt sources may lack: a separate sources file and lists directory are used
# for them, leaving the system's apt configuration untouched.
pkgs=(espeak-ng sox mbrola festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)
for v in "${test_voices[@]}" "${val_voices[@]}" "${train_voices[@]}"; do
    case $v in mb-*) v=${v#mb-}; pkgs+=("mbrola-${v%-en}") ;; esac
done
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    parts=/etc/apt/tempest-devsets/sources.list.d
    lists=/var/lib/apt/tempest-devsets-lists
    $sudo mkdir -p "$parts" "$lists/partial"
    # main is listed too so that dependencies resolve from the same lists.
    $sudo tee "$parts/contrib.sources" > /dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt=(apt-get -o "Dir::Etc::sourceparts=$parts" -o "Dir::State::Lists=$lists"
         -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
    $sudo "${apt[@]}" update
    $sudo env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
        "${missing[@]}"
fi

# ---------------------------------------------------------------------------------------------
mkdir -p "$1"
out="$(cd "$1" && pwd)"
rm -rf "$out/train" "$out/val" "$out/test" "$out/.work"
mkdir -p "$out/.work"
export out

# render VOICE SPLIT VOICE_INDEX: every word, every rendition of one voice. Writes one line per
# clip to $out/.work/VOICE.log: "keep,<path>,<label>,<split>,<voice>,<speech seconds>" or
# "drop,<path>,<label>,<split>,<voice>,<reason>".
render() {
    local voice=$1 split=$2 vi=$3
    local tmp
    tmp=$(mktemp -d)
    local log="$out/.work/$voice.log"
    : > "$log"
    local speeds=(130 160 190) pitches=(35 50 65)
    local wi=0 w combos k s p rel stats mx rms len f0std
    for w in "${words[@]}"; do
        mkdir -p "$out/$split/$w"
        combos=()
        if [ "$split" = train ]; then
            # 4 distinct cells of the 3 × 3 speed × pitch grid, rotating with voice and word.
            for j in 0 1 2 3; do
                k=$(( (vi + 2 * wi + 2 * j) % 9 ))
                combos+=("${speeds[k / 3]}:${pitches[k % 3]}")
            done
            # HTS slt: festival's wrapper ignores pitch shifts; 3 speeds at the default pitch.
            [ "$voice" = fest-slt ] && combos=(130:50 160:50 190:50)
        else
            combos=(140:50 175:50)
        fi
        for c in "${combos[@]}"; do
            s=${c%:*}
            p=${c#*:}
            rel="$split/$w/${voice}_s${s}_p${p}.wav"
            case $voice in
                mb-*)
                    # -a 70: at espeak-ng's default amplitude some voices (mb-fr4) clip.
                    espeak-ng -v "$voice" -a 70 -s "$s" -p "$p" -w "$tmp/raw.wav" "$w" \
                        2> "$tmp/err" ;;
                fest-slt)
                    echo "$w" > "$tmp/text"
                    text2wave -eval "(voice_cmu_us_slt_arctic_hts)" \
                        -eval "(set! hts_engine_params (append hts_engine_params (list (list \"-r\" $(awk "BEGIN{printf \"%.4f\", $s / 160}")))))" \
                        -o "$tmp/raw.wav" "$tmp/text" 2> "$tmp/err" ;;
                fest-*)
                    echo "$w" > "$tmp/text"
                    f0std=14
                    [ "$voice" = fest-ked ] && f0std=15
                    # speed → Duration_Stretch 160/s; pitch 35/50/65 → mean F0 90/105/120 Hz
                    # (the voices' default is 105; F0 std as the voice sets it).
                    text2wave -eval "(voice_${voice#fest-}_diphone)" \
                        -eval "(Parameter.set 'Duration_Stretch $(awk "BEGIN{printf \"%.4f\", 160 / $s}"))" \
                        -eval "(set! int_lr_params '((target_f0_mean $((105 + (p - 50)))) (target_f0_std $f0std) (model_f0_mean 170) (model_f0_std 34)))" \
                        -o "$tmp/raw.wav" "$tmp/text" 2> "$tmp/err" ;;
            esac
            if grep -q 'SIOD ERROR' "$tmp/err"; then
                echo "festival failed for $voice: $(cat "$tmp/err")" >&2
                exit 1
            fi
            if grep -q 'unknown, replaced' "$tmp/err"; then
                echo "drop,$rel,$w,$split,$voice,missing diphone ($(grep -o '[^ ]* unknown' "$tmp/err" | sed 's/ unknown//' | tr '\n' ' ' | sed 's/ $//'))" >> "$log"
                continue
            fi
            # 16 kHz mono, silence trimmed at the start, 0.1 s of silence put back, padded or
            # cut to exactly 1 s, as data/spoken-words/make.sh but trimming below 0.1 % of full
            # scale instead of 1 %: 1 % cut up to 0.1 s off quiet first consonants (/f/, /S/).
            sox -V1 -R "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$tmp/clip.wav" \
                silence 1 0.01 0.1% pad 0.1 1 trim 0 1
            stats=$(sox "$tmp/clip.wav" -n stat 2>&1)
            mx=$(awk '/^Maximum amplitude/{print $3}' <<< "$stats")
            rms=$(awk '/^RMS +amplitude/{print $3}' <<< "$stats")
            if awk -v m="$mx" -v r="$rms" 'BEGIN{exit !(m < 0.05 || r < 0.005)}'; then
                echo "drop,$rel,$w,$split,$voice,near-silent (max $mx RMS $rms)" >> "$log"
                continue
            fi
            # Length of the speech (silence trimmed at both ends) before padding: above 0.9 s
            # the 1 s clip cuts it.
            len=$(sox -V1 "$tmp/raw.wav" -n silence 1 0.01 0.1% reverse silence 1 0.01 0.1% stat 2>&1 \
                  | awk '/^Length/{print $3}')
            mv "$tmp/clip.wav" "$out/$rel"
            echo "keep,$rel,$w,$split,$voice,$len" >> "$log"
        done
        wi=$((wi + 1))
    done
    rm -rf "$tmp"
}
export -f render
export words_list="${words[*]}"

{
    i=0; for v in "${train_voices[@]}"; do echo "$v train $i"; i=$((i + 1)); done
    for v in "${val_voices[@]}"; do echo "$v val 0"; done
    for v in "${test_voices[@]}"; do echo "$v test 0"; done
} | xargs -P "$jobs" -L 1 bash -c 'read -r -a words <<< "$words_list"; render "$@"' _

# ---------------------------------------------------------------------------------------------
cat "$out"/.work/*.log | LC_ALL=C sort -t, -k2,2 > "$out/.work/all"
{
    echo "path,label,split,source"
    awk -F, '$1 == "keep" {print $2 "," $3 "," $4 "," $5}' "$out/.work/all"
} > "$out/manifest.csv"
{
    echo "path,label,split,source,reason"
    awk -F, '$1 == "drop" {print $2 "," $3 "," $4 "," $5 "," $6}' "$out/.work/all"
} > "$out/dropped.csv"
cut_n=$(awk -F, '$1 == "keep" && $6 > 0.9' "$out/.work/all" | wc -l)
rm -rf "$out/.work"

count() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/manifest.csv" | wc -l; }
ndrop() { awk -F, -v s="$1" 'NR > 1 && $3 == s' "$out/dropped.csv" | wc -l; }
secs=$(( $(date +%s) - start ))
join() { local IFS=,; echo "$*"; }
cat > "$out/README.md" <<EOF
# Spoken words by real voices (development set)

35 Speech-Commands v2 words ($(join "${words[@]}" | sed 's/,/, /g')) spoken in English by 23
voices, each made from one real speaker's recordings: 20 MBROLA diphone voices driven by
espeak-ng (native: mb-us1, mb-us2, mb-us3, mb-en1; accented: mb-af1, mb-de1..6, mb-fr1, mb-fr4,
mb-gr2, mb-hu1, mb-nl2, mb-pl1, mb-ro1, mb-sw1, mb-sw2) and 3 Festival voices (kal and ked,
US English diphone voices; slt, an HTS voice trained on CMU ARCTIC slt). The speech is
synthesised: real voices, synthetic prosody.

Every clip: 16 kHz mono 16-bit PCM WAV, exactly 1 s (leading silence trimmed, 0.1 s of silence
put back, padded or cut to 1 s; the trim threshold is 0.1 % of full scale). Made by \`scripts/devsets/spoken-words.sh\` of tempest-rs
(espeak-ng $(dpkg-query -W -f='${Version}' espeak-ng), mbrola $(dpkg-query -W -f='${Version}' mbrola),
festival $(dpkg-query -W -f='${Version}' festival), sox $(dpkg-query -W -f='${Version}' sox), Debian 12).

Split by voice (no voice in two splits):

- test: ${test_voices[*]} — 2 renditions per word (espeak-ng -s 140 and -s 175, pitch 50)
- val: ${val_voices[*]} — the same 2 renditions
- train: ${train_voices[*]} — 4 renditions per word, speed × pitch from {130, 160, 190} ×
  {35, 50, 65} (fest-slt: the 3 speeds at the default pitch)

| split | clips | dropped |
|---|---:|---:|
| train | $(count train) | $(ndrop train) |
| val | $(count val) | $(ndrop val) |
| test | $(count test) | $(ndrop test) |

Dropped clips (listed with the reason in dropped.csv): MBROLA reported a missing diphone (e.g.
mb-us3 has no /O2/, so "on" and "off" lose their vowel) or the clip was near-silent (maximum
amplitude < 0.05 or RMS < 0.005). Kept clips whose speech (silence trimmed at both ends) is
longer than 0.9 s, so cut by the 1 s window: $cut_n.

manifest.csv: path (relative to this folder), label (the word), split, source (the voice).

Licences: the MBROLA voices are not free software; each voice's licence is in
/usr/share/doc/mbrola-<voice>/copyright (non-commercial: they may not be sold or built into a
product that is sold without the database owner's permission). See docs/data.md of tempest-rs.
EOF

echo "spoken-words: $out ($secs s)"
for s in train val test; do
    echo "  $s: $(count "$s") clips, $(ndrop "$s") dropped"
done
echo "  classes: $(awk -F, 'NR > 1 {print $2}' "$out/manifest.csv" | sort -u | wc -l)"
echo "  kept clips cut by the 1 s window: $cut_n"
