#!/usr/bin/env bash
# Installs the peers the conformance run compares ours with, where it can:
#   supervisord and circus from PyPI, each in a virtualenv of its own under .venv-peers/
#   (supervisord's distribution is importable as `supervisor`, our module's name);
#   s6 and runit from the OS packages (apt-get, as root), unless already on PATH.
# What cannot be installed is said and left out: its tests skip with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

venv_peer() {  # venv_peer NAME PROGRAM DISTRIBUTION
    local folder=.venv-peers/$1
    if [ -x "$folder/bin/$2" ]; then
        return 0
    fi
    echo "installing $1 ($3) into $folder"
    "$python" -m venv --clear "$folder" &&
        "$folder/bin/python" -m pip install -q --disable-pip-version-check "$3" ||
        echo "cannot install $1: its tests will skip" >&2
}
venv_peer supervisord supervisord supervisor
venv_peer circus circusd circus

missing=()
command -v s6-svscan >/dev/null || missing+=(s6)
command -v runsvdir >/dev/null || missing+=(runit)
if [ "${#missing[@]}" -ne 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]} (apt-get)"
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/dev/null; } || echo "cannot install ${missing[*]}: their tests will skip" >&2
    else
        echo "not installing ${missing[*]} (needs root and apt-get): their tests will skip" >&2
    fi
fi
exit 0
