"""Peer tools that the benchmarks compare damdup with. Bench only, never `make test`.

imagededup (PyPI, 0.3.x) is installed by `bench/install.sh` (the `bench` extra). Its
`imagededup.methods` imports the CNN module, hence torch and torchvision, even for the
hashing methods, so those come along; see bench/README.md.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path


def imagededup_available() -> str | None:
    """None when imagededup's hashing methods import, else why not (for a person)."""
    try:
        from imagededup.methods import PHash  # noqa: F401
    except Exception as exc:  # ImportError, or torch/torchvision failing to load
        return f"imagededup not importable ({type(exc).__name__}: {exc}); run bench/install.sh"
    return None


def imagededup_phash_duplicates(folder: str | Path) -> set[frozenset[str]]:
    """Pairs of paths (relative to `folder`, sub-folders included) that imagededup's
    PHash calls duplicates at its default threshold (max_distance_threshold=10),
    with its default encoder and search settings otherwise."""
    from imagededup.methods import PHash

    for name in list(logging.root.manager.loggerDict):  # its modules log INFO to stderr
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.WARNING)
    phasher = PHash(verbose=False)
    encodings = phasher.encode_images(image_dir=str(folder), recursive=True)
    with warnings.catch_warnings():  # it warns that num_enc_workers (default) goes unused
        warnings.simplefilter("ignore", RuntimeWarning)
        found = phasher.find_duplicates(encoding_map=encodings)
    return {
        frozenset((name, other))
        for name, others in found.items()
        for other in others
        if other != name
    }
