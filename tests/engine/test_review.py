"""Reviewer decisions on an index built from the real fixture photos: the
queue, deciding, stale and unknown input, the CSV round trip, and decisions
steering the clusters and the marks the next push writes."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.base import MetadataMapping
from adapters.filesystem import Filesystem, FilesystemSettings
from connector.core.index import DecisionRow, IndexStore, SQLiteStore, ordered
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.core.tiers import Tier
from connector.engine.outbox import intended_marks
from connector.engine.review import (
    CSV_FIELDS,
    ImportRejected,
    InvalidInput,
    ReviewItem,
    StalePair,
    UnknownAsset,
    decide,
    export_csv,
    import_csv,
    queue,
)
from connector.engine.scan import current_clusters, sync_and_match
from tests.conftest import PHOTOS

# Two units, each with a folder per place (the folder is the asset's location).
LAYOUT = {
    "kuva": {
        "Kruununhaka/astronaut.jpg": "kuva/IMG_0412.jpg",
        "Kruununhaka/astronaut_kopio.jpg": "kuva/Kopio - IMG_0412.jpg",  # same bytes
        "Kallio/coffee.jpg": "hel-fi/kahvikuppi_Pikolo.jpg",
    },
    "museo": {
        "Kruununhaka/astronaut_half.jpg": "kaupunginmuseo/IMG_0412_puolikas.jpg",  # resize 50 %
        "Kruununhaka/astronaut_crop.jpg": "kasvatus/IMG_0412_rajattu.jpg",  # 5 % crop
        "Kallio/coffee_burst.jpg": "kuva/kahvikuppi_Pikolo_2.jpg",  # the burst's next frame
    },
}
# What each unit says of its department; the museum's text starts like a
# spreadsheet formula, as platform text sometimes does.
DEPARTMENTS = {"kuva": "Kuvapankki", "museo": "=SUM(1+1)"}

ASTRONAUT = "kuva:Kruununhaka/astronaut.jpg"
ASTRONAUT_COPY = "kuva:Kruununhaka/astronaut_kopio.jpg"
HALF = "museo:Kruununhaka/astronaut_half.jpg"
CROP = "museo:Kruununhaka/astronaut_crop.jpg"
COFFEE = "kuva:Kallio/coffee.jpg"
BURST = "museo:Kallio/coffee_burst.jpg"
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def lay_out(root: Path) -> dict[str, Path]:
    """The units' folders under `root`, filled with copies of fixture photos."""
    folders = {}
    for unit, files in LAYOUT.items():
        for name, source in files.items():
            target = root / unit / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PHOTOS / source, target)
        folders[unit] = root / unit
    return folders


def scan(db: Path | str, folders: dict[str, Path]) -> None:
    """Index the folders as damdup does (sync each unit, then match)."""
    adapters = {
        unit: Filesystem(
            FilesystemSettings(
                root=folder,
                metadata=MetadataMapping(
                    location="folder", date="modified", department="=" + DEPARTMENTS[unit]
                ),
            )
        )
        for unit, folder in folders.items()
    }
    store = open_store(db, create=True)
    try:
        sync_and_match(store, dict(adapters), Settings(db=db, workers=2))
    finally:
        store.close()


def build_review_index(root: Path) -> Path:
    """An index of LAYOUT under `root`, for the review tests (web ones too)."""
    db = root / "index.sqlite"
    scan(db, lay_out(root))
    return db


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_review_index(tmp_path_factory.mktemp("review"))


@pytest.fixture
def store(built: Path, index_db: Path | str) -> Iterator[IndexStore]:
    """A fresh copy of the built index for each test, on each store."""
    if isinstance(index_db, Path):
        shutil.copyfile(built, index_db)
    else:
        from connector.core.pgstore import copy_from_sqlite

        copy_from_sqlite(built, index_db)
    opened = open_store(index_db)
    yield opened
    opened.close()


def db_of(store: IndexStore) -> Path | str:
    if isinstance(store, SQLiteStore):
        return store.path
    url: str = getattr(store, "url")  # noqa: B009 - PostgreSQLStore
    return url


def find(items: list[ReviewItem], x: str, y: str) -> ReviewItem:
    (item,) = [i for i in items if {i.a.key, i.b.key} == {x, y}]
    return item


def sha(store: IndexStore, key: str) -> str:
    asset = store.find_asset(key)
    assert asset is not None and asset.sha256 is not None
    return asset.sha256


def test_queue_lists_candidates_then_similar_with_what_a_reviewer_needs(
    store: IndexStore,
) -> None:
    items = queue(store)
    pairs = {frozenset((i.a.key, i.b.key)): i.label for i in items}
    assert pairs[frozenset((ASTRONAUT, HALF))] == "duplicate-candidate"
    assert pairs[frozenset((ASTRONAUT, CROP))] == "duplicate-candidate"
    assert pairs[frozenset((COFFEE, BURST))] == "similar"
    assert all(i.tier in (Tier.NEAR_IDENTICAL, Tier.SIMILAR) for i in items)
    labels = [i.label for i in items]
    assert labels == sorted(labels), "duplicate-candidates come before similar pairs"
    # Identical bytes are never a question: one item per pair of contents, and
    # the copy with the same bytes is listed on it.
    assert not any({i.a.key, i.b.key} == {ASTRONAUT, ASTRONAUT_COPY} for i in items)
    half = find(items, ASTRONAUT, HALF)
    side = half.a if half.a.key == ASTRONAUT else half.b
    assert side.copies == (ASTRONAUT_COPY,)
    other = half.b if side is half.a else half.a
    assert (other.width, other.height) == (256, 256)
    assert (
        other.size_bytes
        == (PHOTOS / LAYOUT["museo"]["Kruununhaka/astronaut_half.jpg"]).stat().st_size
    )
    assert other.format == "JPEG"
    assert other.metadata["location"] == "Kruununhaka"
    assert other.metadata["department"] == "=SUM(1+1)"
    assert other.metadata["date"], "the folder's modified time"
    assert other.url.startswith("file://") and other.url.endswith("astronaut_half.jpg")
    coffee = find(items, COFFEE, BURST)
    assert any("pixel check failed" in reason for reason in coffee.reasons)
    assert coffee.phash_distance <= 12
    fingerprint = store.fingerprint(coffee.a.sha256)
    assert fingerprint is not None and fingerprint.thumb.startswith(b"\xff\xd8"), "a JPEG thumb"


def test_decide_records_who_and_when_and_the_pair_leaves_the_queue(store: IndexStore) -> None:
    before = queue(store)
    row = decide(store, HALF, ASTRONAUT, "same", "  Aino Arkisto ", WHEN)
    assert row == DecisionRow(
        sha_a=sha(store, HALF), sha_b=sha(store, ASTRONAUT), decision="same",
        canonical_sha=None, decided_by="Aino Arkisto", decided_at="2026-03-04T05:06:07+00:00",
    )  # fmt: skip
    stored = store.decisions()[ordered(sha(store, HALF), sha(store, ASTRONAUT))]
    assert (stored.decision, stored.decided_by, stored.decided_at) == (
        "same", "Aino Arkisto", "2026-03-04T05:06:07+00:00",
    )  # fmt: skip
    after = queue(store)
    assert len(after) == len(before) - 1
    assert not any({i.a.key, i.b.key} == {HALF, ASTRONAUT} for i in after)
    listed = queue(store, include_decided=True)
    assert len(listed) == len(before)
    decided = find(listed, HALF, ASTRONAUT)
    assert decided.decided and decided.decision == stored
    assert listed[-1] is decided, "decided pairs are listed after the open ones"
    # `canonical`: A becomes the canonical; the listing then shows it on the left.
    row = decide(store, CROP, ASTRONAUT, "Canonical", "Aino Arkisto", WHEN)
    assert row.canonical_sha == sha(store, CROP)
    chosen = find(queue(store, include_decided=True), CROP, ASTRONAUT)
    assert chosen.a.key == CROP


def test_unknown_asset_is_named_and_nothing_changes(store: IndexStore) -> None:
    with pytest.raises(UnknownAsset, match=r"no asset 'kuva:Kallio/tea\.jpg'"):
        decide(store, COFFEE, "kuva:Kallio/tea.jpg", "same", "Aino")
    assert store.decisions() == {}
    # A mistyped unit: the id names one asset, of another unit.
    unit, _, asset_id = COFFEE.partition(":")
    with pytest.raises(
        UnknownAsset, match=rf"no asset '{unit}x:.*' in the index; did you mean '{COFFEE}'\?"
    ):
        decide(store, f"{unit}x:{asset_id}", CROP, "same", "Aino")
    assert store.decisions() == {}


@pytest.mark.parametrize(
    ("decision", "by", "message"),
    [
        ("same", "   ", "reviewer name is required"),
        ("same", "x" * 201, "longer than 200"),
        ("same", "Aino\x1b[2J", "control characters"),
        ("maybe", "Aino", "unknown decision 'maybe'"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(
    store: IndexStore, decision: str, by: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        decide(store, COFFEE, BURST, decision, by)
    assert store.decisions() == {}


def test_stale_pairs_are_refused_and_nothing_changes(store: IndexStore) -> None:
    with pytest.raises(StalePair, match="not a pair in the index"):
        decide(store, ASTRONAUT, COFFEE, "different", "Aino")
    # The contents changed since the reviewer saw the pair.
    listed = (sha(store, COFFEE), sha(store, ASTRONAUT))
    with pytest.raises(StalePair, match=f"{BURST} has changed since the pair was listed"):
        decide(store, COFFEE, BURST, "different", "Aino", expect=listed)
    assert store.decisions() == {}
    # With the digests as listed, the same decision goes through.
    decide(
        store, COFFEE, BURST, "different", "Aino", expect=(sha(store, COFFEE), sha(store, BURST))
    )
    assert len(store.decisions()) == 1


def test_identical_bytes_accept_only_same_and_store_nothing(store: IndexStore) -> None:
    for decision in ("different", "canonical"):
        with pytest.raises(InvalidInput, match="identical bytes; only `same` applies"):
            decide(store, ASTRONAUT, ASTRONAUT_COPY, decision, "Aino")
    row = decide(store, ASTRONAUT, ASTRONAUT_COPY, "same", "Aino")
    assert row.sha_a == row.sha_b
    assert store.decisions() == {}


def cluster_of(store: IndexStore, key: str) -> tuple[str, set[str]] | None:
    """(canonical, members) of the cluster holding `key`, after decisions."""
    clusters, _relations = current_clusters(store, Settings(db=db_of(store)))
    for cluster in clusters:
        keys = {cluster.canonical.key, *(m.asset.key for m in cluster.members)}
        if key in keys:
            return cluster.canonical.key, keys - {cluster.canonical.key}
    return None


def test_decisions_steer_clusters_and_the_marks_the_next_push_writes(
    store: IndexStore,
) -> None:
    settings = Settings(db=db_of(store))
    assert cluster_of(store, HALF) == (ASTRONAUT, {ASTRONAUT_COPY, HALF, CROP})
    assert cluster_of(store, COFFEE) is None, "another frame of a burst is never merged"

    decide(store, HALF, ASTRONAUT, "different", "Aino", WHEN)
    decide(store, BURST, COFFEE, "same", "Aino", WHEN)
    assert cluster_of(store, HALF) is None, "`different` keeps the pair out of every cluster"
    assert cluster_of(store, ASTRONAUT) == (ASTRONAUT, {ASTRONAUT_COPY, CROP})
    canonical, members = cluster_of(store, BURST) or ("", set())
    assert {canonical, *members} == {COFFEE, BURST}, "`same` promotes the similar pair"

    clusters, relations = current_clusters(store, settings)
    marks = {
        f"{unit}:{asset_id}": m
        for (unit, asset_id), m in intended_marks(clusters, relations).items()
    }
    assert marks[HALF].labels == ("related",), "no longer a duplicate-candidate"
    member = BURST if canonical == COFFEE else COFFEE
    # A reviewer's `same` confirms the duplicate (issue 12): not a candidate.
    assert "duplicate" in marks[member].labels
    assert "duplicate-candidate" not in marks[member].labels
    assert "canonical" in marks[canonical].labels
    assert marks[member].cluster == marks[canonical].cluster is not None

    decide(store, CROP, ASTRONAUT, "canonical", "Aino", WHEN)
    assert cluster_of(store, CROP) == (CROP, {ASTRONAUT, ASTRONAUT_COPY})
    clusters, _ = current_clusters(store, settings)
    (crop_cluster,) = [c for c in clusters if c.canonical.key == CROP]
    assert "reviewer" in crop_cluster.reason


def test_automation_keeps_decisions_a_reupload_inherits_them_and_gone_assets_are_stale(
    tmp_path: Path, index_db: Path | str
) -> None:
    folders = lay_out(tmp_path / "units")
    db = index_db
    scan(db, folders)
    store = open_store(db)
    try:
        decide(store, HALF, ASTRONAUT, "different", "Aino", WHEN)
        decide(store, CROP, ASTRONAUT, "same", "Aino", WHEN)
        held = store.decisions()
        # The half-size copy is uploaded again under another name; the crop is removed.
        shutil.copyfile(
            folders["museo"] / "Kruununhaka/astronaut_half.jpg",
            folders["museo"] / "Kallio/reupload.jpg",
        )
        (folders["museo"] / "Kruununhaka/astronaut_crop.jpg").unlink()
        store.close()
        scan(db, folders)  # automation runs again
        store = open_store(db)
        assert store.decisions() == held, "automation never overrides a decision"
        reupload = "museo:Kallio/reupload.jpg"
        assert sha(store, reupload) == sha(store, HALF)
        items = queue(store)
        assert not any(reupload in (i.a.key, i.b.key) and ASTRONAUT in (i.a.key, i.b.key)
                       for i in items), "the re-upload inherits the decision"  # fmt: skip
        found = cluster_of(store, reupload)
        assert found is not None and {found[0], *found[1]} == {HALF, reupload}, (
            "with the same bytes as the half-size copy, and like it never with the astronaut"
        )
        with pytest.raises(StalePair, match=f"{CROP} is no longer in its unit"):
            decide(store, CROP, ASTRONAUT, "different", "Aino")
        assert store.decisions() == held
    finally:
        store.close()


# -- spreadsheets -------------------------------------------------------------------


def sheet(store: IndexStore, include_decided: bool = False) -> list[dict[str, str]]:
    buffer = io.StringIO()
    written = export_csv(store, buffer, include_decided=include_decided)
    buffer.seek(0)
    reader = csv.DictReader(buffer)
    assert reader.fieldnames == CSV_FIELDS
    rows = list(reader)
    assert len(rows) == written
    return rows


def to_text(rows: list[dict[str, str]], delimiter: str = ",") -> io.StringIO:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    buffer.seek(0)
    return buffer


def pick(rows: list[dict[str, str]], x: str, y: str) -> dict[str, str]:
    (row,) = [r for r in rows if {r["a"], r["b"]} == {x, y}]
    return row


def test_csv_round_trip(store: IndexStore) -> None:
    rows = sheet(store)
    assert len(rows) == len(queue(store))
    half = pick(rows, ASTRONAUT, HALF)
    assert half["tier"] == "duplicate-candidate"
    assert {half["a_location"], half["b_location"]} == {"Kruununhaka"}
    side = "a" if half["a"] == HALF else "b"
    assert half[f"{side}_department"] == "'=SUM(1+1)", "no cell runs as a formula"
    assert half[f"{side}_size"] == "256x256"
    assert half[f"{side}_sha256"] == sha(store, HALF)
    assert pick(rows, COFFEE, BURST)["tier"] == "similar"

    half["decision"] = "different"
    half["decided_by"] = "Sheet Reviewer"
    crop = pick(rows, ASTRONAUT, CROP)
    crop["decision"] = "canonical"
    summary = import_csv(store, to_text(rows), default_by="Default Reviewer", now=WHEN)
    assert summary.as_dict() == {"recorded": 2, "unchanged": 0, "skipped": len(rows) - 2}
    decisions = store.decisions()
    stored = decisions[ordered(sha(store, ASTRONAUT), sha(store, HALF))]
    assert (stored.decision, stored.decided_by) == ("different", "Sheet Reviewer")
    stored = decisions[ordered(sha(store, ASTRONAUT), sha(store, CROP))]
    assert (stored.decision, stored.decided_by) == ("canonical", "Default Reviewer")
    assert stored.canonical_sha == sha(store, crop["a"])

    # Exported again with the decisions, then imported unchanged: nothing is
    # re-stamped, so who and when stay as they were.
    again = sheet(store, include_decided=True)
    assert pick(again, ASTRONAUT, HALF)["decided_by"] == "Sheet Reviewer"
    assert pick(again, ASTRONAUT, CROP)["decision"] == "canonical"
    later = datetime(2027, 1, 1, tzinfo=UTC)
    summary = import_csv(store, to_text(again), now=later)
    assert summary.as_dict() == {"recorded": 0, "unchanged": 2, "skipped": len(again) - 2}
    assert store.decisions() == decisions


def test_a_spreadsheet_saved_with_semicolons_and_a_byte_order_mark_imports(
    store: IndexStore,
) -> None:
    rows = sheet(store)
    pick(rows, COFFEE, BURST)["decision"] = "same"
    text = "\ufeff" + to_text(rows, delimiter=";").getvalue()
    summary = import_csv(store, io.StringIO(text), default_by="Aino")
    assert summary.recorded == 1
    (row,) = store.decisions().values()
    assert row.decision == "same"


BadRow = Callable[[dict[str, str], IndexStore], None]


def _set(**values: str) -> BadRow:
    def change(row: dict[str, str], store: IndexStore) -> None:
        row.update(values)

    return change


def _digest_of(key: str) -> BadRow:
    def change(row: dict[str, str], store: IndexStore) -> None:
        row["b_sha256"] = sha(store, key)

    return change


def _unrelated(row: dict[str, str], store: IndexStore) -> None:
    row.update(a=ASTRONAUT, a_sha256=sha(store, ASTRONAUT), b=COFFEE, b_sha256=sha(store, COFFEE))


def test_a_sheet_with_bad_rows_reports_every_line_and_changes_nothing(
    store: IndexStore,
) -> None:
    rows = sheet(store)
    good = dict(pick(rows, COFFEE, BURST), decision="different", decided_by="Aino")
    template = dict(pick(rows, ASTRONAUT, HALF), decision="same", decided_by="Aino")
    bad: list[tuple[BadRow, str]] = [
        (_set(decision="maybe"), "unknown decision 'maybe'"),
        (_set(a="kuva:Kallio/tea.jpg"), "no asset 'kuva:Kallio/tea.jpg'"),
        (_digest_of(COFFEE), "has changed since the pair was listed"),
        (_unrelated, "not a pair in the index"),
        (_set(decided_by=""), "reviewer name is required"),
        (_set(a_sha256=""), "empty a_sha256"),
    ]
    body = [good]
    for change, _message in bad:
        row = dict(template)
        change(row, store)
        body.append(row)
    body.append(dict(template))  # a good row for the same pair ...
    body.append(dict(template, decision="different"))  # ... and one that contradicts it
    text = to_text(body).getvalue()
    text += ",".join(["x"] * (len(CSV_FIELDS) + 1)) + "\r\n"  # a field too many
    with pytest.raises(ImportRejected) as caught:
        import_csv(store, io.StringIO(text))
    problems = dict(caught.value.problems)
    # Line 1 is the header and line 2 the good row; each bad one is named.
    for line, (_change, message) in enumerate(bad, start=3):
        assert message in problems[line], (line, problems)
    contradiction = 4 + len(bad)
    assert f"decided otherwise on line {contradiction - 1}" in problems[contradiction]
    assert f"{len(CSV_FIELDS) + 1} fields where the header has" in problems[contradiction + 1]
    assert set(problems) == {*range(3, 3 + len(bad)), contradiction, contradiction + 1}
    assert "nothing was imported" in str(caught.value)
    assert store.decisions() == {}, "the good row was not stored either"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("a,b,decision\r\nx,y,same\r\n", "missing column(s): a_sha256, b_sha256"),
        ('a,b,a_sha256,b_sha256,decision\r\n"x,y,1,2,same\r\n', "not valid CSV"),
    ],
)
def test_a_malformed_sheet_is_refused(store: IndexStore, text: str, message: str) -> None:
    with pytest.raises(ImportRejected, match="nothing was imported") as caught:
        import_csv(store, io.StringIO(text), default_by="Aino")
    assert message in str(caught.value)
    assert store.decisions() == {}


def test_clusters_are_those_of_the_whole_index(store: IndexStore) -> None:
    """`current_clusters` reads the assets and fingerprints of related pairs,
    decisions and byte copies only; its clusters and relations are those built
    from every live asset and fingerprint, a reviewer's join of two contents no
    pair relates and a byte copy of a content without pairs included."""
    import numpy as np
    from PIL import Image

    from connector.core.fingerprint import RECIPE, fingerprint_bytes
    from connector.core.index import AssetRow
    from connector.engine.clusters import ShapeLookup, build_clusters
    from connector.engine.scan import lineage_of

    settings = Settings(db=db_of(store))
    shas = []
    for number, name in enumerate(["joined-a", "joined-b", "copied", "byte-copy", "alone"]):
        if name != "byte-copy":  # the same bytes as "copied"
            noise = np.random.default_rng(number).integers(0, 256, (96, 128, 3), dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(noise).save(out, "PNG")
            fingerprint = fingerprint_bytes(out.getvalue())
        row = AssetRow(
            unit="extra", asset_id=name, version="1", url=f"file:///extra/{name}.png",
            size_bytes=fingerprint.size_bytes, modified=None, sha256=fingerprint.sha256,
            error=None, metadata={}, live=True,
        )  # fmt: skip
        store.save_asset("extra", row, fingerprint)
        shas.append(fingerprint.sha256)
    sha_a, sha_b = ordered(shas[0], shas[1])
    store.save_decision(
        DecisionRow(sha_a, sha_b, "same", None, "reviewer", datetime.now(UTC).isoformat())
    )

    found = current_clusters(store, settings)
    whole = build_clusters(
        store.live_assets(),
        ShapeLookup(store.fingerprint_columns(RECIPE)),
        store.pairs(),
        store.decisions(),
        settings.authoritative_units,
        lineage_of(store),
    )
    assert found == whole
    keys = {member.asset.key for cluster in found[0] for member in cluster.members}
    keys |= {cluster.canonical.key for cluster in found[0]}
    assert {"extra:joined-a", "extra:joined-b", "extra:copied", "extra:byte-copy"} <= keys
    assert "extra:alone" not in keys
