# Sourced by the data recipes (scripts/devsets, scripts/corpus): installs Debian packages.
#
#   apt_install PKG...        apt-get update, then install PKG... without recommends
#                             (through sudo unless root); nothing when no PKG is given
#   missing_debs PKG...       prints, one per line, each PKG that dpkg does not have installed
apt_install() {
    [ $# -gt 0 ] || return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

missing_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || echo "$p"
    done
}
