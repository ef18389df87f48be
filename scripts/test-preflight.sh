#!/usr/bin/env bash
# What `make test` takes and what it changes on this host, said before it starts; installs nothing.
#   scripts/test-preflight.sh                  # CONTAINERS=yes (the default): every test runs
#   CONTAINERS=no scripts/test-preflight.sh    # tests/test_containers.py left out, reported as skipped
# As root (CI) it lists each step scripts/system-deps.sh and scripts/container-engine.sh still have
# to take here (apt-get, dockerd, /etc/containers/containers.conf, the base image). Without root
# those steps cannot run: when the container tests could not run as this user, one line says what
# is missing and how to run the rest, and it exits 1 before anything is installed or tested.
set -euo pipefail
cd "$(dirname "$0")/.."
CONTAINERS=${CONTAINERS:-yes}
say() { echo "make test: $*"; }

case "$CONTAINERS" in
    yes | no) ;;
    *) say "CONTAINERS is yes or no, not '$CONTAINERS'"; exit 2 ;;
esac
# The time is what `.ci/run` (`time make test`) took on 2 cores with .venv and the images in place.
say "ruff, mypy and the whole test suite take about 50 minutes on 2 cores (the first run installs .venv before)"

apt_steps=$(bash scripts/system-deps.sh --plan)
engine_steps=""
[ "$CONTAINERS" = no ] || engine_steps=$(bash scripts/container-engine.sh --plan)
left_out="the container tests (tests/test_containers.py) are left out (CONTAINERS=no) and reported as skipped"

if [ "$(id -u)" -eq 0 ]; then
    steps=$(printf '%s\n%s' "$apt_steps" "$engine_steps" | sed '/^$/d')
    if [ -z "$steps" ]; then
        say "nothing to install: every tool the tests drive is on this host"
    else
        say "as root, before the tests, it changes this host (scripts/system-deps.sh, scripts/container-engine.sh):"
        sed 's/^/    /' <<<"$steps"
        if [ -t 0 ]; then
            say "starting in 10 s (Ctrl-C to stop)"
            sleep 10
        fi
    fi
    [ "$CONTAINERS" = yes ] || say "$left_out"
    exit 0
fi

user=$(id -un)
tools=""
if [ -n "$apt_steps" ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        say "with sudo, before the tests: sudo $apt_steps"
    else
        tools=${apt_steps#apt-get install }
    fi
fi
if [ "$CONTAINERS" = yes ] && ! problem=$(bash scripts/container-engine.sh --check 2>&1); then
    problem=${problem#container-engine: }
    missing="${problem% (run *}${tools:+, and $tools not installed}"
    say "cannot run everything as $user (not root): $missing. Run \`sudo make test\` for everything, or \`make test CONTAINERS=no\` to run the rest (the container tests then show as skipped)."
    exit 1
fi
[ -z "$tools" ] || say "$tools not installed and not root: the tests that drive them skip (sudo apt-get install -y $tools first)"
[ "$CONTAINERS" = yes ] || say "$left_out"
exit 0
