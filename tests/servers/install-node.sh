#!/bin/sh
# Installs the Node.js servers the tests run against, from the npm registry,
# into a project-local prefix (.damdup/node, ignored by git): Azurite, the
# Azure Storage emulator Microsoft publishes, for the azure_blob adapter.
# Idempotent: a fast no-op when the pinned version is there. Nothing is
# installed system-wide except Debian's nodejs and npm when they are missing.
#
# Azurite 3.35.0 is the newest release that runs on Node.js 20 (3.36 asks for
# 21, 3.37 for 22); it supports blob index tags (3.17+) and, with
# --skipApiVersionCheck, the service versions newer SDKs send.
set -eu

AZURITE_VERSION=3.35.0

root=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${DAMDUP_NODE_PREFIX:-"$root/.damdup/node"}
installed="$prefix/node_modules/azurite/package.json"

if [ -f "$installed" ] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$installed" \
    && [ -x "$prefix/node_modules/.bin/azurite-blob" ]; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-node.sh: npm is missing; install Debian's nodejs and npm (as root)" >&2
        exit 1
    fi
    echo "install-node.sh: installing nodejs npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

echo "install-node.sh: installing azurite@$AZURITE_VERSION into $prefix" >&2
mkdir -p "$prefix"
# A package.json of its own keeps npm from walking up to any other project.
[ -f "$prefix/package.json" ] || printf '{"private": true}\n' >"$prefix/package.json"
npm install --prefix "$prefix" --no-audit --no-fund --no-update-notifier --loglevel=error \
    --save-exact "azurite@$AZURITE_VERSION" >/dev/null
test -x "$prefix/node_modules/.bin/azurite-blob"
