#!/usr/bin/env bash
# Install the real container stack used by the tests, the demo and CI:
# Debian's Docker Engine (docker.io), the CNCF registry (docker-registry) and a
# C toolchain able to link static binaries (gcc, libc6-dev), and Chromium,
# whose headless mode renders the fleet report in the tests.
#
# Idempotent: packages are installed only when their binaries are missing, so a
# second run does nothing and needs no network. Must run as root (apt-get).
set -euo pipefail

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install.sh: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# A static link needs libc.a, which only libc6-dev ships.
[[ -e /usr/lib/x86_64-linux-gnu/libc.a || -e /usr/lib/aarch64-linux-gnu/libc.a ]] \
    || missing+=(libc6-dev)

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: container stack already installed"
    exit 0
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

for binary in dockerd docker-registry gcc chromium; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "install.sh: $binary still missing after install" >&2
        exit 1
    fi
done
echo "install.sh: done"
