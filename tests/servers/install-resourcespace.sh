#!/bin/sh
# Installs what the real ResourceSpace needs to run in the tests, from Debian
# 12's packages: PHP 8.2 with the extensions its composer.json requires
# (mbstring, intl, curl, dom, zip, gd, mysqli), MariaDB, and the tools its
# previews and metadata are made with (ImageMagick, Ghostscript, ExifTool).
# ResourceSpace itself is never installed here: the tests unpack its source
# (shared/platforms/resourcespace-*.tar.gz beside the repository) into
# .damdup/resourcespace/ each session.
# Idempotent: a fast no-op when everything is present; exits 0 with a message
# when the source is absent, as then the tests skip.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
sources=""
# $DAMDUP_PLATFORMS_DIR (or $DAMDUP_PLATFORM_SOURCES), when set, is the only
# place looked in, as the tests do.
override=${DAMDUP_PLATFORMS_DIR:-${DAMDUP_PLATFORM_SOURCES:-}}
if [ -n "$override" ]; then
    places=$override
else
    places="$repo/../shared/platforms
$(dirname "$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo /nonexistent/x)")/../shared/platforms"
fi
old_ifs=$IFS
IFS='
'
for dir in $places; do
    [ -n "$dir" ] || continue
    for tarball in "$dir"/resourcespace-*.tar.gz; do
        [ -f "$tarball" ] && sources=$tarball && break 2
    done
done
IFS=$old_ifs
if [ -z "$sources" ]; then
    echo "install-resourcespace.sh: no resourcespace-*.tar.gz in ../shared/platforms beside the repository (or \$DAMDUP_PLATFORMS_DIR): the real ResourceSpace tests will skip" >&2
    exit 0
fi

missing=""
for package in php-cli php-mysql php-gd php-mbstring php-intl php-curl php-xml php-zip \
    imagemagick ghostscript libimage-exiftool-perl; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    missing="$missing mariadb-server"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo "$0" "$@"
    fi
    echo "install-resourcespace.sh: need root to install:$missing" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-resourcespace.sh: installing$missing" >&2
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
