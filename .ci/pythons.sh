#!/usr/bin/env bash
# Runs the test suite under each supported Python (`make unit-all`, part of `make test`).
#
#   PYTHON_VERSIONS  the X.Y versions to run (default: 3.11 3.12 3.13, what
#                    pyproject.toml's requires-python and classifiers claim)
#   VENV             the default virtual environment (.venv), used for its own version
#   EXTRAS           the extras installed with taonet in each .venv-X.Y (default: dev;
#                    the Makefile passes its TEST_EXTRAS, the same as .venv's)
#   PYTEST_ARGS      passed to pytest (default: -q)
#   CI               when "true", a version with no interpreter on this machine is a
#                    failure instead of a line saying it was skipped
#
# A version other than the default venv's runs in .venv-X.Y, made (and kept up to date
# with pyproject.toml) from the first interpreter found: pythonX.Y on PATH, then the
# newest $PYENV_ROOT/versions/X.Y.* (~/.pyenv by default). Every version found runs,
# even after one failed; the summary says which passed, failed or were not found.
set -uo pipefail
cd "$(dirname "$0")/.."

versions=${PYTHON_VERSIONS:-3.11 3.12 3.13}
venv=${VENV:-.venv}
extras=${EXTRAS:-dev}
read -r -a pytest_args <<<"${PYTEST_ARGS:--q}"
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
ci=${CI:-false}

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

find_python() { # X.Y -> path of an interpreter of that version, or nothing
    local want=$1 candidate
    candidate=$(command -v "python$want" 2>/dev/null) || true
    if [ -n "$candidate" ] && [ "$(version_of "$candidate")" = "$want" ]; then
        echo "$candidate"
        return
    fi
    # The newest patch release pyenv has (3.13.10 after 3.13.9), without its -dev/-debug builds.
    local release
    for release in $(ls "$pyenv_root/versions" 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+\$" | sort -t. -k3,3nr); do
        candidate=$pyenv_root/versions/$release/bin/python
        if [ -x "$candidate" ] && [ "$(version_of "$candidate")" = "$want" ]; then
            echo "$candidate"
            return
        fi
    done
}

ensure_venv() { # interpreter, venv dir: create it and install taonet[EXTRAS] when stale
    local python=$1 dir=$2
    if [ ! -x "$dir/bin/python" ]; then
        echo "== creating $dir from $python"
        "$python" -m venv "$dir" || return 1
    fi
    local stamp=$dir/.taonet-installed
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$extras" ]; then
        echo "== installing taonet[$extras] into $dir"
        "$dir/bin/pip" install --quiet -e ".[$extras]" || return 1
        echo "$extras" >"$stamp"
    fi
}

default_version=$(version_of "$venv/bin/python")
passed=() failed=() missing=()
for want in $versions; do
    if [ "$want" = "$default_version" ]; then
        dir=$venv
        python=$venv/bin/python
    else
        python=$(find_python "$want")
        if [ -z "$python" ]; then
            echo "== python $want: not found (no python$want on PATH, nothing in $pyenv_root/versions/$want.*)"
            missing+=("$want")
            continue
        fi
        dir=.venv-$want
        if ! ensure_venv "$python" "$dir"; then
            echo "== python $want: could not set up $dir"
            failed+=("$want")
            continue
        fi
    fi
    echo "== python $want: $("$dir/bin/python" -c 'import sys; print(sys.version.split()[0])') in $dir: pytest ${pytest_args[*]}"
    if "$dir/bin/pytest" "${pytest_args[@]}"; then
        passed+=("$want")
    else
        failed+=("$want")
    fi
done

echo "== python versions: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; not found: ${missing[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
    exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$ci" = true ]; then
        echo "== CI=true: every supported Python must run; install the missing ones (e.g. pyenv install ${missing[0]})"
        exit 1
    fi
    echo "== (outside CI a missing version is skipped; CI=true makes it a failure)"
fi
exit 0
