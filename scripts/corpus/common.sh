# Shared by scripts/corpus/audio.sh and images.sh (sourced, not run): writing the CSV files,
# reading a package's licence, and fetching and unpacking one package without installing it.
# The sourcing script sets `out` (its output folder, holding skipped.csv) and `work` (scratch).

# The labelled development sets' source packages: never part of an unlabelled corpus.
exclude='^(mbrola.*|festival.*|festvox.*|timgm6mb-soundfont|musescore-general-soundfont|fluid-soundfont.*)$'

# csv FIELD: the field quoted for CSV.
csv() {
    printf '"%s"' "${1//\"/\"\"}"
}
# skip PACKAGE FILE REASON
skip() {
    echo "$(csv "$1"),$(csv "$2"),$(csv "$3")" >>"$out/skipped.csv"
}

# licence DIR PACKAGE: the licences named in the package's copyright file (DEP-5 "License:"
# lines, each once), or its first line that names a licence, or "unknown".
licence() {
    local f="$1/usr/share/doc/$2/copyright"
    if [ ! -f "$f" ]; then
        # Data packages often point to a common package's doc folder through a symlink.
        f=$(find "$1/usr/share/doc" -name copyright -type f 2>/dev/null | head -1 || true)
    fi
    if [ -z "$f" ] || [ ! -f "$f" ]; then
        echo "unknown (no copyright file in the .deb)"
        return
    fi
    local l
    l=$(grep -E '^License:' "$f" | sed -E 's/^License:[[:space:]]*//' | awk 'NF && !seen[$0]++' | paste -sd ';' - || true)
    if [ -z "$l" ]; then
        # Not machine-readable: the licences it refers to in /usr/share/common-licenses.
        l=$(grep -oE 'common-licenses/[A-Za-z0-9.+_-]+' "$f" | sed 's/[.]$//' | awk '!seen[$0]++' | paste -sd ';' - || true)
    fi
    if [ -z "$l" ]; then
        l=$(grep -m1 -iE 'GNU General Public|public domain|creative commons|CC-BY|BSD|MIT|Artistic' "$f" | tr -s ' \t' ' ' | cut -c1-120 || true)
    fi
    echo "${l:-unknown}"
}

# unpack PACKAGE: downloads PACKAGE's .deb (apt-get download: nothing is installed) and
# unpacks it into "$work/PACKAGE/root"; sets `root` to that folder and `lic` to its licence.
# Returns 1, with the reason in skipped.csv, for a refused package or a failed download.
unpack() {
    local pkg="$1"
    if [[ "$pkg" =~ $exclude ]]; then
        echo "refused: $pkg (a labelled development set's source)"
        skip "$pkg" "" "a labelled development set's source package"
        return 1
    fi
    echo "== $pkg"
    local dir="$work/$pkg"
    mkdir -p "$dir/deb" "$dir/root"
    if ! (cd "$dir/deb" && apt-get download "$pkg" >/dev/null 2>&1); then
        echo "   cannot download $pkg"
        skip "$pkg" "" "apt-get download failed"
        return 1
    fi
    local deb version
    deb=$(ls "$dir"/deb/*.deb)
    version=$(dpkg-deb -f "$deb" Version)
    dpkg-deb -x "$deb" "$dir/root"
    root="$dir/root"
    lic=$(licence "$root" "$pkg")
    echo "   version $version, licence: $lic"
}
