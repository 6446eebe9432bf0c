"""Golden values pin the fingerprint recipe: if a library upgrade or a code change
moves any bit, this fails, and RECIPE must be bumped so that old and new codes
are never compared (imagehash tests/test_hash_is_constant.py does the same)."""

from __future__ import annotations

import pytest

from connector.core.fingerprint import RECIPE, fingerprint_bytes
from tests.conftest import PHOTOS

GOLDEN = {
    # file: (phash, dhash, phash_inner, dhash_inner, payload digest prefix)
    "kuva/IMG_0412.jpg": (
        0xC2924C5532BDDFC8, 0xCD8DD91D897293A7, 0xD2B2CC4F72BB9148, 0x8DADBD1D8D525394,
        "068096fd6680",
    ),
    "kuva/moottoripyörä_vasen.png": (
        0xC507C66B9370AA73, 0xCCC6C696D81380E0, 0xC107C75B92789E72, 0xCCC2D696D8521AE0,
        "def7869bd59a",
    ),
}  # fmt: skip


def test_recipe_version_matches_the_golden_values() -> None:
    assert RECIPE == 4, "golden values below belong to recipe 4: re-pin them with the bump"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_codes_are_constant(name: str) -> None:
    fingerprint = fingerprint_bytes((PHOTOS / name).read_bytes())
    phash, dhash, phash_inner, dhash_inner, payload = GOLDEN[name]
    assert (fingerprint.phash, fingerprint.dhash) == (phash, dhash)
    assert (fingerprint.phash_inner, fingerprint.dhash_inner) == (phash_inner, dhash_inner)
    assert fingerprint.payload_digest is not None
    assert fingerprint.payload_digest.startswith(payload)
    assert bin(fingerprint.phash).count("1") == 32, "imagehash's pHash sets exactly 32 bits"
