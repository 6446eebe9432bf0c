"""The index read as columns holds what the row dicts held, on both stores,
and the whole-index search on columns finds what the dict-based one found."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from connector.core.columns import FingerprintColumns
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import IndexStore
from connector.core.store import open_store
from connector.engine.matcher import find_candidates
from connector.engine.memindex import MatchIndex
from tests.core.test_index import asset, fingerprint
from tests.reference import dict_candidates


def rows_of(columns: FingerprintColumns) -> list[dict[str, Any]]:
    return [columns.row(i) for i in range(len(columns))]


def without_watermark(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "watermark"} for row in rows]


def variety() -> list[Fingerprint]:
    """Trimmed variants NULL or not, flat or not, digests or none, codes with
    the top bit set (negative as the stores keep them)."""
    base = fingerprint("s0")
    out = [
        base,
        replace(base, "s1", phash_trim=0x8000_0000_0000_0001, dhash_trim=None, flat=True),
        replace(base, "s2", phash_trim=None, dhash_trim=(1 << 64) - 1, payload_digest="p1"),
        replace(base, "s3", payload_digest="p1", format="PNG", width=7, height=9, size_bytes=0),
        replace(base, "s4", phash=0, dhash=0, phash_inner=1 << 63, dhash_inner=12345),
    ]
    return out


def replace(fp: Fingerprint, sha: str, **changes: Any) -> Fingerprint:
    return Fingerprint(**{**fp.__dict__, "sha256": sha, **changes})


def filled(index_db: str | Path) -> IndexStore:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    prints = variety()
    assets = [asset(f"a{i}", fp.sha256) for i, fp in enumerate(prints)]
    assets.append(asset("gone", "s9"))
    store.save_page("u", run, assets, [*prints, replace(prints[0], "s9")], [], None)
    store.set_pixel_digest("s2", "pix2")
    store.set_pixel_digest("s4", "pix2")
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], [f"a{i}" for i in range(len(prints))], None)
    store.retire_unseen("u", later)  # s9's asset leaves: its fingerprint is not live
    return store


def test_columns_hold_what_the_rows_hold(index_db: str | Path) -> None:
    store = filled(index_db)
    columns = store.fingerprint_columns(RECIPE)
    rows = store.fingerprint_rows(RECIPE)
    assert [row["sha256"] for row in rows] == ["s0", "s1", "s2", "s3", "s4"]
    assert rows_of(columns) == rows
    assert rows[1]["dhash_trim"] is None and rows[1]["flat"] is True
    assert rows[2]["phash_trim"] is None and rows[2]["pixel_digest"] == "pix2"
    assert rows[1]["phash_trim"] == 0x8000_0000_0000_0001
    # Saved since a watermark, live or not, in saving order.
    everything = store.fingerprint_columns(RECIPE, after=0)
    assert rows_of(everything) == without_watermark(store.fingerprint_rows_after(RECIPE, 0))
    assert "s9" in [everything.sha(i) for i in range(len(everything))]
    assert len(store.fingerprint_columns(RECIPE, after=store.fingerprint_watermark())) == 0
    assert len(store.fingerprint_columns(RECIPE + 1)) == 0
    assert columns.find("s3") == 3 and columns.find("s9") is None and columns.find("zz") is None
    store.close()


def test_columns_are_compact() -> None:
    columns = FingerprintColumns.from_rows(
        {**fingerprint(f"{i:064x}").__dict__, "pixel_digest": None} for i in range(1000)
    )
    assert columns.sha256.dtype == np.dtype("S64")
    assert columns.phash.dtype == np.uint64 and columns.phash.shape == (1000, 3)
    assert len(columns.pixel_digest) == 0 and len(columns.payload_digest) == 0


def test_concat_and_take_keep_rows_and_digests(index_db: str | Path) -> None:
    store = filled(index_db)
    columns = store.fingerprint_columns(RECIPE)
    rows = rows_of(columns)
    front, back = columns.take(np.arange(2)), columns.take(np.arange(2, len(columns)))
    assert rows_of(FingerprintColumns.concat([front, back])) == rows
    assert rows_of(columns.take(np.array([1, 3]))) == [rows[1], rows[3]]
    store.close()


# -- the whole-index search, against the dict-based one it replaced -------------


def test_candidates_on_columns_equal_the_dict_based_search(
    scanned_fixtures: Path, index_db: str | Path, tmp_path: Path
) -> None:
    if isinstance(index_db, Path):
        shutil.copy(scanned_fixtures, index_db)
    else:
        from connector.core.pgstore import copy_from_sqlite

        copy_from_sqlite(scanned_fixtures, index_db)
    store = open_store(index_db)
    rows = store.fingerprint_rows(RECIPE)
    columns = store.fingerprint_columns(RECIPE)
    assert rows_of(columns) == rows
    expected = dict_candidates(rows)
    assert len(expected) > 500  # the fixtures' copies, re-encodes, crops...
    assert find_candidates(columns) == expected
    assert find_candidates(rows) == expected
    store.close()


def test_match_index_built_or_grown_finds_the_whole_index_candidates(
    scanned_fixtures: Path,
) -> None:
    store = open_store(scanned_fixtures)
    everything = store.fingerprint_columns(RECIPE, after=0)
    whole = find_candidates(everything)
    built = MatchIndex(everything, store.fingerprint_watermark())
    half = len(everything) // 2
    grown = MatchIndex(everything.take(np.arange(half)), 0)
    grown.add_columns(everything.take(np.arange(half, len(everything))), 1)
    grown.add_columns(everything.take(np.arange(3)), 2)  # already held: ignored
    assert len(grown) == len(everything) and grown.side == len(everything) - half
    rebuilt = MatchIndex(grown.columns(), grown.watermark)
    for at in range(0, len(everything), 7):
        fp = store.fingerprint(everything.sha(at))
        assert fp is not None
        expected = sorted(
            (other, distances)
            for (a, b), distances in whole.items()
            if fp.sha256 in (a, b)
            for other in (b if a == fp.sha256 else a,)
        )
        for index in (built, grown, rebuilt):
            found = sorted(
                (c.sha256, (c.phash_distance, c.dhash_distance)) for c in index.candidates(fp)
            )
            # MatchIndex does not pair by pixel digest (a query has none yet).
            assert set(found) <= set(expected)
            pixel_only = set(expected) - set(found)
            for other, _ in pixel_only:
                position = everything.find(other)
                assert position is not None
                assert everything.pixel_digest.get(position) is not None
        shape = built.shape(fp.sha256)
        assert shape is not None and (shape.width, shape.format) == (fp.width, fp.format)
    store.close()
