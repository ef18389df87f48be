#!/usr/bin/env bash
# Debian packages the test suite drives as real tools: Chromium (web UI tests, via Playwright)
# and Prometheus with promtool (monitoring tests; installed without its recommends, never started
# as a system service: the tests start their own on 127.0.0.1).
# Installs only what is missing. Without root or password-less sudo it says so and carries on:
# those tests then skip on a developer's machine and fail in CI (CI=true), where this runs as root.
#   scripts/system-deps.sh          # install what is missing
#   scripts/system-deps.sh --plan   # only list what would be installed (scripts/test-preflight.sh)
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${1:-}" = --plan ]; then
    echo "apt-get install ${missing[*]}"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "system-deps: cannot install ${missing[*]} (not root, no sudo); run: sudo apt-get install -y ${missing[*]}"
    exit 0
fi
echo "system-deps: installing ${missing[*]} with apt-get"
"${sudo[@]}" apt-get update -qq
# --no-install-recommends keeps Prometheus's exporters and web assets out; Chromium needs its fonts.
for package in "${missing[@]}"; do
    options=(-y -qq)
    [ "$package" = prometheus ] && options+=(--no-install-recommends)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install "${options[@]}" "$package" >/dev/null
done
