#!/usr/bin/env bash
# Install what the benchmarks need into the project's venv: the `bench` extra, i.e.
# the peers (imagededup, which drags in torch + torchvision) and the photo packages.
# Bench only: `make test` never runs this. Usage: bench/install.sh [VENV] (default .venv)
#
# Everything is expressed in pyproject.toml's `bench` extra; this script only adds a
# skip when it is already there, a check that the peer imports, and the size report.
# Cost, measured on a fresh venv that already had `.[test]` (591 MB):
# +5.7 GB (nvidia 3.2 GB, torch 1.2 GB, triton 0.9 GB), about 1 minute, because
# pip (Python 3.11) takes torch 2.14.1 / torchvision 0.29.1 and the nvidia-* wheels
# from this machine's disk. See bench/README.md for why nothing lighter works.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="$VENV/bin/python"

# The large set's photographs (bench/largeset.py) come from Debian's wallpaper packages:
# lomiri's two (camera photos under CC BY / CC BY-SA / CC0) and KDE's (photographs by
# Risto Saukonpää and others). About 120 MB installed, no dependencies; a no-op when present.
photos="lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers"
missing=""
for package in $photos; do
  dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

check() {
  "$PY" - <<'PY'
import sys
sys.path.insert(0, "bench")
from peers import imagededup_available
why = imagededup_available()
if why:
    sys.exit(why)
import imagededup, torch, torchvision
print(f"imagededup {imagededup.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
}

if check 2>/dev/null && "$PY" -c 'import faiss, psutil, skimage, sklearn' 2>/dev/null; then
  echo "bench extras already installed"
  exit 0
fi
before=$(du -sm "$VENV" | cut -f1)
start=$(date +%s)
"$PY" -m pip install -q -e '.[bench]'
check
echo "bench extras installed in $(( $(date +%s) - start )) s; venv ${before} -> $(du -sm "$VENV" | cut -f1) MB"
