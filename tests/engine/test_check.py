"""Single-asset checks and lookups (`connector.engine.check`) against emulators
on 127.0.0.1: Drupal, CKAN and Finna describe one asset by id; a Finna unit
with filters cannot, and its check syncs the unit instead."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.base import Marks
from connector.core.fingerprint import RECIPE
from connector.core.index import SQLiteStore
from connector.core.settings import Settings
from connector.core.urls import url_under
from connector.engine.check import Checker, LookupRefused
from connector.engine.outbox import intended_marks, missing_metadata
from connector.engine.scan import current_clusters, sync_and_match
from tests.conftest import BAD, PHOTOS
from tests.contract.harness import Harness, start_harness

KINDS = {"museum": "drupal", "opendata": "ckan", "finna": "finna"}
LABELS = json.loads((PHOTOS.parent / "labels.json").read_text())["files"]


def photo(name: str, variant: str, scene_only: bool = False) -> Path:
    """The fixture file of photo `name` in `variant` (for "different_shot",
    another shot of that scene)."""
    for path, label in sorted(LABELS.items()):
        if label["variant"] == variant and label["scene" if scene_only else "photo"] == name:
            return PHOTOS / path
    raise LookupError(f"no {variant} of {name}")


def unrelated() -> Path:
    return next(
        PHOTOS / path
        for path, label in sorted(LABELS.items())
        if label["variant"] == "original" and label["scene"] != "china"
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Harness]]:
    started = {unit: start_harness(kind) for unit, kind in KINDS.items()}
    yield started
    for harness in started.values():
        harness.close()


def add_scene(servers: dict[str, Harness]) -> dict[str, str]:
    """The museum has the original (with its metadata) and another shot of the
    scene; open data a byte copy of the original."""
    return {
        "original": servers["museum"].add(
            "china.jpg",
            photo("china", "original").read_bytes(),
            {"location": "Helsinki", "date": "2024-05-01", "department": "Museum"},
        ),
        "shot": servers["museum"].add(
            "shot.jpg", photo("china", "different_shot", scene_only=True).read_bytes(), None
        ),
        "copy": servers["opendata"].add("copy.jpg", photo("china", "byte_copy").read_bytes(), None),
    }


@pytest.fixture
def site(servers: dict[str, Harness], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`add_scene`, every unit synced and matched once."""
    for harness in servers.values():
        harness.reset()
    ids = add_scene(servers)
    db = tmp_path / "index.sqlite"
    settings = Settings(db=db, workers=2)
    adapters = {unit: harness.adapter() for unit, harness in servers.items()}
    store = SQLiteStore(db)
    sync_and_match(store, adapters, settings)
    checker = Checker(db, settings, adapters, {unit: False for unit in adapters})
    yield {
        "servers": servers,
        "ids": ids,
        "db": db,
        "store": store,
        "settings": settings,
        "checker": checker,
    }
    checker.close()
    store.close()


def check(site: dict[str, Any], unit: str, asset_id: str) -> dict[str, Any]:
    check_id = site["store"].start_check(unit, asset_id, "test")
    verdict = site["checker"].check(unit, asset_id, check_id)
    stored = site["store"].checks(unit, asset_id, limit=1)[0]
    assert stored.id == check_id and stored.finished_at is not None
    if "error" in verdict:
        assert stored.verdict is None and stored.error == verdict["error"]
    else:
        assert stored.verdict == json.loads(json.dumps(verdict)) and stored.error is None
    return verdict


def whole_index_cluster(site: dict[str, Any], key: str) -> tuple[str, str] | None:
    """(cluster id, canonical key) of the asset as `damdup clusters` sees it."""
    clusters, _ = current_clusters(site["store"], site["settings"])
    for cluster in clusters:
        if key in {cluster.canonical.key, *(m.asset.key for m in cluster.members)}:
            return cluster.id, cluster.canonical.key
    return None


def whole_index_marks(site: dict[str, Any]) -> dict[tuple[str, str], Marks]:
    """The marks `damdup push` would intend after a whole-index match."""
    clusters, relations = current_clusters(site["store"], site["settings"])
    return intended_marks(clusters, relations, site["store"].live_assets())


def test_a_new_resized_copy_is_a_candidate_of_the_canonical(site: dict[str, Any]) -> None:
    new_id = site["servers"]["opendata"].add(
        "small.jpg", photo("china", "reencode_q60").read_bytes(), None
    )
    verdict = check(site, "opendata", new_id)
    assert verdict["role"] == "duplicate-candidate" and verdict["tier"] == "near_identical"
    assert verdict["canonical"]["unit"] == "museum"
    assert verdict["canonical"]["asset_id"] == site["ids"]["original"]
    assert "complete mandatory metadata" in verdict["canonical"]["reason"]
    copies = {(c["unit"], c["asset_id"]): c["tier"] for c in verdict["copies"]}
    assert copies[("opendata", site["ids"]["copy"])] == "exact"
    assert ("museum", site["ids"]["shot"]) in {
        (s["unit"], s["asset_id"]) for s in verdict["similar"]
    }
    row = site["store"].find_asset(f"opendata:{new_id}")
    assert row is not None and "location" in verdict["metadata_missing"]
    assert verdict["metadata_missing"] == missing_metadata(row)
    # The same cluster as a whole-index build would make.
    assert whole_index_cluster(site, f"opendata:{new_id}") == (
        verdict["cluster"],
        f"museum:{site['ids']['original']}",
    )
    # Writes are off: a dry run, nothing on the platform.
    mine = next(m for m in verdict["marks"] if m["asset_id"] == new_id)
    assert mine["dry_run"] and mine["outcome"] == "would-change"
    assert {"duplicate-candidate", "metadata-missing"} <= set(mine["labels"])
    assert mine["labels"] == list(whole_index_marks(site)[("opendata", new_id)].labels)
    assert site["servers"]["opendata"].stored_marks(new_id).empty


def test_a_byte_copy_on_another_platform_is_exact_in_a_webhook_check(
    site: dict[str, Any],
) -> None:
    """The museum (Drupal) is fingerprinted from a rendition, open data (CKAN)
    from the file itself: a check compares the originals, as a scan does."""
    with Image.open(unrelated()) as image:  # large enough for the museum's renditions
        large = image.resize((image.width * 3, image.height * 3), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    on_opendata = site["servers"]["opendata"].add("kopio.jpg", data, None)
    assert check(site, "opendata", on_opendata)["role"] == "unique"
    in_museum = site["servers"]["museum"].add("original.jpg", data, None)
    verdict = check(site, "museum", in_museum)
    rows = [
        site["store"].find_asset(key) for key in (f"museum:{in_museum}", f"opendata:{on_opendata}")
    ]
    assert rows[0] is not None and rows[1] is not None
    assert rows[0].sha256 != rows[1].sha256, "the museum's side must be a rendition"
    assert verdict["tier"] == "exact", verdict
    pair = site["store"].pairs_touching([rows[0].sha256], RECIPE)
    assert [p.tier for p in pair if rows[1].sha256 in (p.sha_a, p.sha_b)] == ["exact"]


def test_a_check_settles_no_pair_with_content_no_asset_holds(site: dict[str, Any]) -> None:
    """The search structure keeps every fingerprint, also of files since
    replaced or removed; a check settles pairs only with contents a live asset
    holds, as the matcher does (it searches live fingerprints only)."""
    store = site["store"]
    shot = store.find_asset(f"museum:{site['ids']['shot']}")
    assert shot is not None and shot.sha256 is not None
    assert check(site, "museum", site["ids"]["shot"])["role"] == "unique"  # structure built
    site["servers"]["museum"].remove(site["ids"]["shot"])
    museum = {"museum": site["checker"].adapters["museum"]}
    sync_and_match(store, museum, site["settings"], full=True)  # a removal shows in full
    assert not store.live_assets_with([shot.sha256])
    with Image.open(photo("china", "different_shot", scene_only=True)) as image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)  # a re-encode of the removed shot
    new_id = site["servers"]["opendata"].add("shot-again.jpg", buffer.getvalue(), None)
    verdict = check(site, "opendata", new_id)
    row = store.find_asset(f"opendata:{new_id}")
    assert row is not None and row.sha256 is not None
    assert site["checker"].index.current(store).position(shot.sha256) is not None
    touching = store.pairs_touching([row.sha256], RECIPE)
    assert touching, "the check settled the pairs with live contents"
    assert all(shot.sha256 not in (p.sha_a, p.sha_b) for p in touching), touching
    assert verdict["role"] == "unique", verdict


def test_marks_are_written_where_the_unit_writes(site: dict[str, Any]) -> None:
    adapters = site["checker"].adapters
    writer = Checker(site["db"], site["settings"], adapters, {"opendata": True})
    try:
        new_id = site["servers"]["opendata"].add(
            "small.jpg", photo("china", "reencode_q60").read_bytes(), None
        )
        check_id = site["store"].start_check("opendata", new_id, "test")
        verdict = writer.check("opendata", new_id, check_id)
    finally:
        writer.close()
    marks = site["servers"]["opendata"].stored_marks(new_id)
    assert marks == whole_index_marks(site)[("opendata", new_id)]
    assert {"duplicate-candidate", "metadata-missing"} <= set(marks.labels)
    assert marks.cluster == verdict["cluster"]
    assert marks.canonical_url == verdict["canonical"]["url"]
    # The museum's unit does not write: its canonical is untouched.
    museum = {m["asset_id"]: m for m in verdict["marks"] if m["unit"] == "museum"}
    assert museum[site["ids"]["original"]]["dry_run"]


def test_a_unique_photo_is_unique_and_a_missing_one_is_an_error(site: dict[str, Any]) -> None:
    new_id = site["servers"]["museum"].add("other.jpg", unrelated().read_bytes(), None)
    verdict = check(site, "museum", new_id)
    assert verdict["role"] == "unique" and verdict["cluster"] is None
    assert verdict["copies"] == [] and verdict["canonical"] is None
    site["servers"]["museum"].remove(new_id)
    gone = check(site, "museum", new_id)
    assert "has no asset" in gone["error"]
    unknown = check(site, "nowhere", "1")
    assert "unknown unit" in unknown["error"]


def test_a_corrupt_upload_is_recorded_not_raised(site: dict[str, Any]) -> None:
    bad = BAD / "truncated.png"
    new_id = site["servers"]["opendata"].add("broken.png", bad.read_bytes(), None)
    verdict = check(site, "opendata", new_id)
    assert verdict["error"]
    row = site["store"].find_asset(f"opendata:{new_id}")
    assert row is not None and row.error is not None and row.sha256 is None


def test_a_unit_without_describe_is_synced_instead(site: dict[str, Any]) -> None:
    """Finna's filters cannot be checked on one record: a unit with them
    declares no describe, so its check syncs the unit and asks for no record."""
    finna = site["servers"]["finna"]
    adapter = finna.adapter(filters=['online_boolean:"1"'])
    assert not adapter.capabilities.describe
    new_id = finna.add("finna.jpg", photo("china", "resize_25").read_bytes(), None)
    checker = Checker(
        site["db"],
        site["settings"],
        {**site["checker"].adapters, "finna": adapter},
        dict.fromkeys(KINDS, False),
    )
    try:
        verdict = checker.check("finna", new_id, site["store"].start_check("finna", new_id, "test"))
    finally:
        checker.close()
    assert verdict["role"] in ("duplicate", "duplicate-candidate")
    assert verdict["canonical"]["asset_id"] == site["ids"]["original"]
    assert finna.emulator.requests_for("GET", "/api/v1/record") == []


def test_checks_run_from_several_threads(site: dict[str, Any]) -> None:
    names = ["reencode_q60", "darker_15", "webp", "watermark"]
    ids = [
        site["servers"]["opendata"].add(f"{n}.jpg", photo("china", n).read_bytes(), None)
        for n in names
    ]
    verdicts: dict[str, dict[str, Any]] = {}

    def one(asset_id: str) -> None:
        store = SQLiteStore(site["db"])
        try:
            check_id = store.start_check("opendata", asset_id, "test")
        finally:
            store.close()
        verdicts[asset_id] = site["checker"].check("opendata", asset_id, check_id)

    threads = [threading.Thread(target=one, args=(asset_id,)) for asset_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all("error" not in verdicts[asset_id] for asset_id in ids), verdicts
    assert {verdicts[asset_id]["canonical"]["asset_id"] for asset_id in ids} == {
        site["ids"]["original"]
    }
    # Every asset ends where a whole-index build puts it.
    for asset_id in ids:
        cluster = whole_index_cluster(site, f"opendata:{asset_id}")
        assert cluster is not None and cluster[1] == f"museum:{site['ids']['original']}"


# -- lookup ----------------------------------------------------------------------


def test_lookup_of_a_resized_copy_names_the_canonical_and_every_copy(
    site: dict[str, Any],
) -> None:
    before = site["store"].dump()
    answer = site["checker"].lookup(data=photo("china", "resize_25").read_bytes())
    assert answer["match"]
    assert answer["canonical"]["unit"] == "museum"
    assert answer["canonical"]["asset_id"] == site["ids"]["original"]
    assert answer["canonical"]["metadata"]["location"] == "Helsinki"
    assert answer["canonical"]["match"] == "near_identical"
    assert {(c["unit"], c["asset_id"], c["tier"]) for c in answer["copies"]} == {
        ("opendata", site["ids"]["copy"], "exact")
    }
    assert [(s["unit"], s["asset_id"]) for s in answer["similar"]] == [
        ("museum", site["ids"]["shot"])
    ]
    assert site["store"].dump() == before  # a lookup saves nothing


def test_lookup_of_another_shot_lists_only_other_shots(site: dict[str, Any]) -> None:
    shots = [
        PHOTOS / path
        for path, label in sorted(LABELS.items())
        if label["scene"] == "china" and label["variant"] == "different_shot"
    ]
    assert shots
    answer = site["checker"].lookup(data=shots[0].read_bytes())
    # The indexed shot itself is that file; a second different shot is not.
    for path in shots[1:]:
        other = site["checker"].lookup(data=path.read_bytes())
        assert not other["match"] and other["canonical"] is None
        assert other["similar"], f"{path.name}: no other shots of the scene"
    assert answer["match"] and answer["canonical"]["asset_id"] == site["ids"]["shot"]


def test_lookup_of_an_unrelated_photo_is_no_match(site: dict[str, Any]) -> None:
    answer = site["checker"].lookup(data=unrelated().read_bytes())
    assert answer == {**answer, "match": False, "canonical": None, "copies": [], "similar": []}


def test_lookup_refuses_what_it_cannot_look_up(site: dict[str, Any]) -> None:
    checker = site["checker"]
    with pytest.raises(LookupRefused, match="not under the base URL"):
        checker.lookup(url="http://127.0.0.1:9/elsewhere.jpg")
    with pytest.raises(LookupRefused, match="only http"):
        checker.lookup(url="file:///etc/passwd")
    with pytest.raises(LookupRefused, match="not an image"):
        checker.lookup(data=b"this is not an image at all")
    with pytest.raises(LookupRefused):
        checker.lookup()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("bomb_100000x100000.png", "decompression bomb refused"),
        ("sof_65500x65500.jpg", "decompression bomb refused"),
        ("truncated.png", "damaged"),
    ],
)
def test_hostile_uploads_are_refused_in_a_worker_and_the_checker_goes_on(
    site: dict[str, Any], name: str, why: str
) -> None:
    checker = site["checker"]
    with pytest.raises(LookupRefused, match=f"not an image damdup can read: .*{why}"):
        checker.lookup(data=(BAD / name).read_bytes())
    answer = checker.lookup(data=photo("china", "resize_25").read_bytes())
    assert answer["canonical"]["asset_id"] == site["ids"]["original"]


def test_lookup_by_url(site: dict[str, Any]) -> None:
    store = site["store"]
    copy = store.find_asset(f"opendata:{site['ids']['copy']}")
    assert copy is not None
    # An indexed address is answered from the index.
    answer = site["checker"].lookup(url=copy.url)
    assert answer["canonical"]["asset_id"] == site["ids"]["original"]
    assert answer["query"]["indexed"]
    # Another file on a unit's platform is fetched through its adapter.
    new_id = site["servers"]["opendata"].add(
        "unlisted.jpg", photo("china", "reencode_q60").read_bytes(), None
    )
    ref = site["checker"].adapters["opendata"].describe(new_id)
    assert ref.original_url and not store.assets_at_url(ref.original_url)
    fetched = site["checker"].lookup(url=ref.original_url)
    assert fetched["canonical"]["asset_id"] == site["ids"]["original"]
    assert not fetched["query"]["indexed"]


@pytest.mark.parametrize(
    ("url", "under"),
    [
        ("http://127.0.0.1:8080/site/a.jpg", True),
        ("http://127.0.0.1:8080/site", False),  # the base without its slash is not under it
        ("http://127.0.0.1:8080/site/../etc/x", False),
        ("http://127.0.0.1:8080/site/%2e%2e/x", False),
        ("http://127.0.0.1:8080/site%2fa", False),
        ("http://127.0.0.1:8080/sites/a.jpg", False),
        ("http://user:pw@127.0.0.1:8080/site/a.jpg", False),
        ("https://127.0.0.1:8080/site/a.jpg", False),
        ("http://127.0.0.1:8081/site/a.jpg", False),
    ],
)
def test_only_addresses_under_a_units_base_url_are_fetched(url: str, under: bool) -> None:
    assert (url_under(url, "http://127.0.0.1:8080/site/") is None) is under
