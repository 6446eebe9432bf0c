"""Core: fingerprints, capture facts, tiers, search, pixel check, index, settings."""

import os
import tempfile
from pathlib import Path


def _numba_cache_dir() -> None:
    """numba caches compiled search kernels beside their source; where that is
    not writable (a system-wide install run by a service user) it would refuse
    to load them at all. Point it at a per-user cache then, before numba loads."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    if os.access(Path(__file__).parent, os.W_OK):
        return
    for base in (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"),
        Path(tempfile.gettempdir()),
    ):
        target = base / f"damdup-numba-{os.getuid()}"
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(target, os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = str(target)
            return


_numba_cache_dir()
