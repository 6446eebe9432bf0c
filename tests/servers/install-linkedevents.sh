#!/bin/sh
# Installs the real Linked Events (the City of Helsinki's event and image API,
# Django + PostgreSQL/PostGIS) for the tests, from the source snapshot in
# shared/platforms/ beside the repository (beside the main checkout for a git
# worktree; $DAMDUP_PLATFORMS_DIR, or $DAMDUP_PLATFORM_SOURCES, overrides). The source is unpacked into
# .damdup/linkedevents/ (ignored by git), never into the repository, with a
# virtualenv of its own for its Python packages, so that damdup's .venv is
# untouched. Debian packages: PostgreSQL with PostGIS (GDAL, GEOS and PROJ
# come with it), Voikko and its Finnish dictionary (its search filters load
# them at import), and what its C extensions build with.
#
# Its Python packages are the versions its uv.lock pins, from PyPI: the
# project's own dependencies and uWSGI (its "prod" group), which serves it in
# production and serves its media folder. pyproject.toml asks for Python
# 3.12; the lock's versions all support 3.11 and none of the code the server
# runs needs 3.12 (only one importer, run by `manage.py event_import`, uses
# 3.12 syntax), so Debian 12's Python 3.11 runs it unchanged.
#
# Idempotent: a fast no-op when everything is there. Exits 0 with a message
# when the sources are absent (the tests then skip).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cache="$root/.damdup/linkedevents"

platforms=${DAMDUP_PLATFORMS_DIR:-${DAMDUP_PLATFORM_SOURCES:-}}
if [ -z "$platforms" ]; then
    platforms="$(dirname "$root")/shared/platforms"
    if [ ! -d "$platforms" ] && [ -f "$root/.git" ]; then
        # A git worktree: shared/ sits beside the main checkout.
        common=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
        [ -n "$common" ] && platforms="$(dirname "$(dirname "$common")")/shared/platforms"
    fi
fi
tarball=$(ls "$platforms"/linkedevents-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
if [ -z "$tarball" ]; then
    echo "install-linkedevents.sh: no linkedevents-*.tar.gz in $platforms;" \
        "the real Linked Events tests will skip" >&2
    exit 0
fi
release=$(basename "$tarball" .tar.gz)

packages="postgresql postgresql-15-postgis-3 libvoikko1 voikko-fi gcc libpq-dev python3-dev python3-venv"
missing=""
for package in $packages; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -z "$missing" ] && [ -x "$cache/venv/bin/uwsgi" ] \
    && [ "$(cat "$cache/installed" 2>/dev/null)" = "$release" ]; then
    exit 0
fi

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            exec sudo "$0" "$@"
        fi
        echo "install-linkedevents.sh: need root to install:$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "install-linkedevents.sh: installing$missing" >&2
    # Another install running at the same time holds dpkg's lock: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
fi

echo "install-linkedevents.sh: unpacking $release and installing its packages into $cache" >&2
rm -rf "$cache/src" "$cache/installed"
mkdir -p "$cache/src"
tar -xzf "$tarball" -C "$cache/src" --strip-components=1
[ -x "$cache/venv/bin/python" ] || python3 -m venv "$cache/venv"
"$cache/venv/bin/python" -m pip install -q --upgrade pip

# The lock's pins: the project's dependencies (with their extras, e.g.
# psycopg[c]) and the prod group's uWSGI as requirements, every other locked
# package as a constraint.
"$cache/venv/bin/python" - "$cache/src/uv.lock" "$cache/requirements.txt" "$cache/constraints.txt" <<'EOF'
import sys
import tomllib

lock_path, requirements_path, constraints_path = sys.argv[1:]
with open(lock_path, "rb") as lock_file:
    lock = tomllib.load(lock_file)
versions = {p["name"]: p["version"] for p in lock["package"] if "registry" in p.get("source", {})}
project = next(p for p in lock["package"] if p.get("source", {}).get("virtual") == ".")
wanted = project["metadata"]["requires-dist"] + [
    d for d in project["metadata"]["requires-dev"]["prod"] if d["name"] == "uwsgi"
]
with open(requirements_path, "w") as out:
    for dependency in wanted:
        extras = ",".join(dependency.get("extras", []))
        name = dependency["name"] + (f"[{extras}]" if extras else "")
        out.write(f"{name}=={versions[dependency['name']]}\n")
with open(constraints_path, "w") as out:
    out.writelines(f"{name}=={version}\n" for name, version in sorted(versions.items()))
EOF
"$cache/venv/bin/python" -m pip install -q -r "$cache/requirements.txt" -c "$cache/constraints.txt"
# Django finds GDAL and GEOS by their library names; fail here, not in a test.
"$cache/venv/bin/python" -c 'import ctypes.util as u, sys; sys.exit(not (u.find_library("gdal") and u.find_library("geos_c")))'
echo "$release" >"$cache/installed"
