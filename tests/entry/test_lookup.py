"""`damdup lookup IMAGE_FILE|URL` as a user runs it, against two units on
emulators (Drupal and CKAN on 127.0.0.1) synced by `damdup sync`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BAD, damdup
from tests.contract.harness import Harness, start_harness
from tests.engine.test_check import add_scene, photo, unrelated
from tests.servers.config import write_config

UNITS = {"museum": "drupal", "opendata": "ckan", "cloud": "s3"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    servers: dict[str, Harness] = {unit: start_harness(kind) for unit, kind in UNITS.items()}
    tmp = tmp_path_factory.mktemp("lookup")
    try:
        ids = add_scene(servers)
        ids["webp"] = servers["opendata"].add(
            "copy.webp", photo("china", "webp").read_bytes(), None
        )
        config = tmp / "damdup.toml"
        units = {unit: (kind, servers[unit].settings()) for unit, kind in UNITS.items()}
        env = write_config(config, tmp / "index.sqlite", units)
        damdup("sync", "--config", str(config), "-q", env=env)
        yield {"servers": servers, "ids": ids, "config": config, "env": env, "tmp": tmp}
    finally:
        for harness in servers.values():
            harness.close()


def lookup(site: dict[str, Any], target: str, *extra: str) -> Any:
    result = damdup(
        "lookup", target, "--config", str(site["config"]), *extra, env=site["env"], check=False
    )
    return result


def answer(site: dict[str, Any], target: str) -> dict[str, Any]:
    result = lookup(site, target, "--format", "json")
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_a_resized_copy_names_the_canonical_with_its_metadata_and_every_copy(
    site: dict[str, Any],
) -> None:
    found = answer(site, str(photo("china", "resize_25")))
    assert found["match"]
    canonical = found["canonical"]
    assert (canonical["unit"], canonical["asset_id"]) == ("museum", site["ids"]["original"])
    assert canonical["metadata"]["location"] == "Helsinki"
    assert canonical["metadata"]["department"] == "Museum"
    assert canonical["metadata"]["date"].startswith("2024-05-01")
    assert canonical["url"].startswith("http://127.0.0.1:")
    copies = {(c["unit"], c["asset_id"]): c["tier"] for c in found["copies"]}
    assert copies[("opendata", site["ids"]["copy"])] == "exact"
    assert copies[("opendata", site["ids"]["webp"])] in ("same_pixels", "near_identical")
    assert [(s["unit"], s["asset_id"]) for s in found["similar"]] == [
        ("museum", site["ids"]["shot"])
    ]
    text = lookup(site, str(photo("china", "resize_25"))).stdout
    assert f"canonical museum:{site['ids']['original']}" in text
    assert "other shots of this scene" in text and "Helsinki" in text


def test_the_other_shot_is_its_own_canonical_and_the_original_another_shot(
    site: dict[str, Any],
) -> None:
    found = answer(site, str(photo("china", "different_shot", scene_only=True)))
    assert found["canonical"]["asset_id"] == site["ids"]["shot"]
    assert found["canonical"]["reason"] == "the only copy in the index"
    assert found["copies"] == []
    assert {(s["unit"], s["asset_id"]) for s in found["similar"]} >= {
        ("museum", site["ids"]["original"])
    }


def test_an_unrelated_photo_is_no_match(site: dict[str, Any]) -> None:
    found = answer(site, str(unrelated()))
    assert not found["match"] and found["canonical"] is None and found["similar"] == []
    assert "no match" in lookup(site, str(unrelated())).stdout


def test_a_url_in_an_object_store_is_read_through_its_unit_and_only_under_its_prefix(
    site: dict[str, Any],
) -> None:
    """An object store has no base URL: its adapter reads an object only at
    its bucket's address and under the unit's prefix."""
    cloud = site["servers"]["cloud"]
    key = cloud.add("unlisted-copy.jpg", photo("china", "resize_25").read_bytes(), None)
    address = cloud.adapter().describe(key).url
    found = answer(site, address)
    assert (found["canonical"]["unit"], found["canonical"]["asset_id"]) == (
        "museum",
        site["ids"]["original"],
    )
    assert not found["query"]["indexed"]
    cloud.put("outside/other.jpg", photo("china", "resize_25").read_bytes())
    outside = address.replace(key, "outside/other.jpg")
    assert outside != address
    result = lookup(site, outside)
    assert result.returncode == 2 and "not under the base URL of any configured unit" in (
        result.stderr
    )


def test_a_url_outside_every_unit_is_refused(site: dict[str, Any]) -> None:
    result = lookup(site, "http://127.0.0.1:9/somewhere/else.jpg")
    assert result.returncode == 2
    assert "not under the base URL of any configured unit" in result.stderr


def test_a_corrupt_file_is_a_clear_error(site: dict[str, Any]) -> None:
    result = lookup(site, str(BAD / "truncated_half.jpg"))
    assert result.returncode == 2
    assert "not an image damdup can read" in result.stderr
    missing = lookup(site, str(site["tmp"] / "nothing-here.jpg"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_an_image_over_the_cap_is_refused_in_the_words_a_sync_records(
    site: dict[str, Any],
) -> None:
    big = site["tmp"] / "big.jpg"
    big.write_bytes(photo("china", "original").read_bytes().ljust(2**20 + 1, b"\0"))
    result = damdup(
        "lookup", str(big), "--config", str(site["config"]),
        env={**site["env"], "DAMDUP_MAX_FILE_MB": "1"}, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "lookup refused: file is over the 1,048,576 byte limit" in result.stderr


def test_an_indexed_url_is_answered_from_the_index(site: dict[str, Any]) -> None:
    before = len(site["servers"]["opendata"].proxy.log)  # type: ignore[union-attr]
    url = site["servers"]["opendata"].adapter().describe(site["ids"]["copy"]).url
    after_describe = len(site["servers"]["opendata"].proxy.log)  # type: ignore[union-attr]
    found = answer(site, url)
    assert found["query"]["indexed"]
    assert found["canonical"]["asset_id"] == site["ids"]["original"]
    # Nothing was fetched for the lookup itself.
    assert len(site["servers"]["opendata"].proxy.log) == after_describe  # type: ignore[union-attr]
    assert after_describe > before
