#!/usr/bin/env bash
# Debian packages engarde's demo, tests and benchmarks need. Idempotent: installs only what is
# missing (so it costs nothing once done). Needs root when something is missing.
set -euo pipefail
PKGS=(iproute2 wireguard-go wireguard-tools nftables iputils-ping tcpdump procps
      chromium python3-venv make gcc wget systemd)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -c /dev/net/tun ] && [ "$(id -u)" = 0 ]; then  # wireguard-go needs it
    modprobe tun 2>/dev/null || true
    [ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 666 /dev/net/tun; }
fi
exit 0
