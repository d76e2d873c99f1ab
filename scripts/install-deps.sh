#!/usr/bin/env bash
# Installs the Debian packages moonwire needs to build, test and benchmark, when missing.
# Idempotent: does nothing (and needs no root) when everything is already there.
set -euo pipefail

PKGS=(
  build-essential pkg-config clang-format
  luajit2 libluajit2-5.1-dev libuv1-dev
  lua-lpeg lua-cjson lua-busted lua-check lua-socket lua-posix
  libssl-dev zlib1g-dev
  curl netcat-openbsd wrk lua-luv
  python3 python3-websockets python3-prometheus-client nodejs node-ws
)
if [ "${MOONWIRE_BROWSER_TESTS:-1}" = 1 ]; then
  PKGS+=(chromium)
fi
# `make bench` also compares against nginx + lua-nginx-module.
if [ "${1:-}" = "--bench" ]; then
  PKGS+=(nginx libnginx-mod-http-lua)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Browser specs drive Debian's chromium with playwright-core from the npm registry.
if [ "${MOONWIRE_BROWSER_TESTS:-1}" = 1 ] && [ -f spec/browser/package.json ] \
    && [ ! -d spec/browser/node_modules/playwright-core ]; then
  echo "install-deps: npm install in spec/browser"
  (cd spec/browser && npm install --no-audit --no-fund --silent)
fi
exit 0
