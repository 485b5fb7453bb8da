#!/usr/bin/env bash
# Install the real container stack used by the tests, the demo and CI:
# Debian's Docker Engine (docker.io), the CNCF registry (docker-registry) and a
# C toolchain able to link static binaries (gcc, libc6-dev); with
# --with-browser also Chromium, whose headless mode renders the fleet report
# in the tests (the demo does not need it).
#
# Idempotent: packages are installed only when their binaries are missing, so a
# second run does nothing and needs no network. Must run as root (apt-get).
set -euo pipefail

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install.sh: must run as root (apt-get install)" >&2
    exit 1
fi

browser=0
[[ "${1:-}" == "--with-browser" ]] && browser=1

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if ((browser)); then
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
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

binaries=(dockerd docker-registry gcc)
((browser)) && binaries+=(chromium)
for binary in "${binaries[@]}"; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "install.sh: $binary still missing after install" >&2
        exit 1
    fi
done
echo "install.sh: done"
