#!/usr/bin/env bash
# Debian packages the test suite drives as real tools: Chromium (web UI tests, via Playwright).
# Installs only what is missing. Without root or password-less sudo it says so and carries on:
# those tests then skip on a developer's machine and fail in CI (CI=true), where this runs as root.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
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
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
