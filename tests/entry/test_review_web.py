"""The review page end to end: `damdup serve`'s server on a free port of
127.0.0.1, Debian's chromium driven by Playwright, an index of real fixture
photos. Screenshots go to test-artifacts/review/ (git ignores test-artifacts/)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from connector.core.index import SQLiteStore, ordered
from connector.engine.review import queue
from connector.serve import make_review_server
from tests.conftest import ROOT
from tests.engine.test_review import (
    ASTRONAUT,
    BURST,
    COFFEE,
    CROP,
    HALF,
    build_review_index,
    scan,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "review"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_review_index(tmp_path_factory.mktemp("review-web"))


@pytest.fixture
def db(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built index for each test."""
    path = tmp_path / "index.sqlite"
    shutil.copyfile(built, path)
    return path


class Running:
    """A WSGI server on a free port of 127.0.0.1, in a thread."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_port}"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def review(db: Path) -> Iterator[Running]:
    running = Running(make_review_server(db, "127.0.0.1", 0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    """A full-page screenshot once every thumbnail is in (the page loads those
    below the fold lazily, which a full-page screenshot does not trigger)."""
    page.evaluate(
        """() => Promise.all([...document.images].map((image) => {
             image.loading = "eager";
             return image.decode().catch(() => null);
           }))"""
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def card(page: Page, x: str, y: str) -> Any:
    return page.locator(f'article[data-a="{x}"][data-b="{y}"], article[data-a="{y}"][data-b="{x}"]')


def decisions(db: Path) -> dict[tuple[str, str], Any]:
    store = SQLiteStore(db)
    try:
        return store.decisions()
    finally:
        store.close()


def digest(db: Path, key: str) -> str:
    store = SQLiteStore(db)
    try:
        asset = store.find_asset(key)
        assert asset is not None and asset.sha256 is not None
        return asset.sha256
    finally:
        store.close()


def test_a_reviewer_decides_same_different_and_canonical_on_the_page(
    page: Page, review: Running, db: Path
) -> None:
    store = SQLiteStore(db)
    listed = queue(store)
    store.close()
    assert len(listed) == 4
    page.goto(review.url + "/review")
    cards = page.locator("article.pair")
    expect(cards).to_have_count(4)
    expect(page.locator("#count")).to_have_text("4 pairs to review")
    first = card(page, ASTRONAUT, HALF)
    expect(first.locator(".label")).to_have_text("duplicate-candidate")
    expect(card(page, COFFEE, BURST).locator(".label")).to_have_text("similar")
    expect(first.locator("figure[data-side] dd").first).to_have_text("Kruununhaka")
    # The thumbnails are the index's own, served by the page's origin.
    expect(first.locator("img").first).to_have_js_property("complete", True)
    assert first.locator("img").first.evaluate("img => img.naturalWidth") > 0
    shot(page, "01-queue.png")

    # No name yet: the page says so and records nothing.
    first.get_by_role("button", name="same", exact=True).click()
    expect(page.locator("#status")).to_contain_text("Type your name")
    assert decisions(db) == {}
    page.fill("#reviewer", "Aino Arkisto")

    first.get_by_role("button", name="same", exact=True).click()
    expect(first).to_have_count(0)
    expect(page.locator("#count")).to_have_text("3 pairs to review")
    expect(page.locator("#status")).to_contain_text("Recorded")
    shot(page, "02-after-same.png")

    card(page, COFFEE, BURST).get_by_role("button", name="different", exact=True).click()
    expect(card(page, COFFEE, BURST)).to_have_count(0)
    crop_card = card(page, ASTRONAUT, CROP)
    crop_card.locator(f'figure:has(strong:text-is("{CROP}")) button.canonical').click()
    expect(crop_card).to_have_count(0)
    expect(cards).to_have_count(1)
    expect(page.locator("#count")).to_have_text("1 pair to review")

    held = decisions(db)
    assert {key: (row.decision, row.decided_by) for key, row in held.items()} == {
        ordered(digest(db, ASTRONAUT), digest(db, HALF)): ("same", "Aino Arkisto"),
        ordered(digest(db, COFFEE), digest(db, BURST)): ("different", "Aino Arkisto"),
        ordered(digest(db, ASTRONAUT), digest(db, CROP)): ("canonical", "Aino Arkisto"),
    }
    assert held[ordered(digest(db, ASTRONAUT), digest(db, CROP))].canonical_sha == digest(db, CROP)

    # Another visit: the name is remembered, the queue is what is left.
    page.reload()
    expect(page.locator("#reviewer")).to_have_value("Aino Arkisto")
    expect(cards).to_have_count(1)
    expect(card(page, HALF, CROP)).to_have_count(1)
    shot(page, "03-after-reload.png")
    assert len(requests.get(review.url + "/api/review/queue", timeout=10).json()["items"]) == 1


def test_a_pair_gone_stale_while_the_page_was_open_is_refused(page: Page, tmp_path: Path) -> None:
    db = build_review_index(tmp_path)
    running = Running(make_review_server(db, "127.0.0.1", 0))
    try:
        page.goto(running.url + "/review")
        page.fill("#reviewer", "Aino Arkisto")
        expect(card(page, COFFEE, BURST)).to_have_count(1)
        # Meanwhile the burst frame is removed from its unit and the index synced.
        (tmp_path / "museo" / "Kallio" / "coffee_burst.jpg").unlink()
        scan(db, {unit: tmp_path / unit for unit in ("kuva", "museo")})
        card(page, COFFEE, BURST).get_by_role("button", name="different", exact=True).click()
        expect(page.locator("#status")).to_contain_text(f"{BURST} is no longer in its unit")
        expect(card(page, COFFEE, BURST)).to_have_count(0)  # the queue was listed again
        expect(page.locator("article.pair")).to_have_count(3)
        shot(page, "04-stale-pair.png")
        assert decisions(db) == {}
    finally:
        running.stop()


def attacker_site(target: str, body: str) -> Any:
    """Another origin's page that tries to record a decision on the review
    server: a plain form (text/plain, no preflight), a no-cors fetch, and a
    JSON fetch (which needs CORS approval the review server never gives)."""
    page = f"""<!doctype html><html><body>
<form id="f" method="post" action="{target}" enctype="text/plain">
<input type="hidden" name='{body[:-2]}' value='"}}'></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", body: '{body}',
                    headers: {{"Content-Type": "text/plain"}}}}).catch(() => {{}});
fetch("{target}", {{method: "POST", body: '{body}',
                    headers: {{"Content-Type": "application/json"}}}})
  .then(() => {{ document.title = "json fetch answered"; }})
  .catch(() => {{ document.title = "json fetch blocked"; }})
  .finally(() => document.getElementById("f").submit());
</script></body></html>"""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response(page, mimetype="text/html")(environ, start_response)

    return make_server("127.0.0.1", 0, app, threaded=True)


def test_forged_cross_origin_posts_are_refused(page: Page, review: Running, db: Path) -> None:
    body = (
        f'{{"a": "{ASTRONAUT}", "b": "{HALF}", "decision": "different", "by": "mallory", "x": "'
        + '"}'
    )
    attacker = Running(attacker_site(review.url + "/api/review/decide", body))
    statuses: list[int] = []
    page.on(
        "response",
        lambda response: (
            statuses.append(response.status)
            if response.url.endswith("/api/review/decide")
            else None
        ),
    )
    try:
        with page.expect_navigation(url=review.url + "/api/review/decide"):
            page.goto(attacker.url + "/")
        expect(page.locator("body")).to_contain_text("cross_origin")
    finally:
        attacker.stop()
    assert 403 in statuses and not any(200 <= status < 300 for status in statuses)
    assert decisions(db) == {}

    # The same from outside a browser, and the DNS-rebinding variant.
    url = review.url + "/api/review/decide"
    good = {"a": ASTRONAUT, "b": HALF, "decision": "different", "by": "mallory"}
    forged = requests.post(url, json=good, headers={"Origin": "http://evil.example"}, timeout=10)
    assert forged.status_code == 403 and forged.json()["code"] == "cross_origin"
    rebound = requests.post(url, json=good, headers={"Host": "evil.example:8765"}, timeout=10)
    assert rebound.status_code == 403 and rebound.json()["code"] == "host"
    form = requests.post(url, data=good, timeout=10)
    assert form.status_code == 415 and form.json()["code"] == "content_type"
    assert decisions(db) == {}


def test_the_api_answers_bad_input_with_clear_json_errors(review: Running, db: Path) -> None:
    url = review.url + "/api/review/decide"
    same_origin = {"Origin": review.url}

    def post(payload: Any) -> requests.Response:
        return requests.post(url, json=payload, headers=same_origin, timeout=10)

    unknown = post({"a": ASTRONAUT, "b": "museo:nope.jpg", "decision": "same", "by": "Aino"})
    assert unknown.status_code == 404 and "no asset 'museo:nope.jpg'" in unknown.json()["error"]
    stale = post(
        {"a": ASTRONAUT, "b": HALF, "decision": "same", "by": "Aino",
         "a_sha256": digest(db, ASTRONAUT), "b_sha256": digest(db, COFFEE)}
    )  # fmt: skip
    assert stale.status_code == 409 and stale.json()["code"] == "stale_pair"
    unrelated = post({"a": ASTRONAUT, "b": COFFEE, "decision": "same", "by": "Aino"})
    assert unrelated.status_code == 409 and "not a pair" in unrelated.json()["error"]
    wrong = post({"a": ASTRONAUT, "b": HALF, "decision": "maybe", "by": "Aino"})
    assert wrong.status_code == 400 and "unknown decision" in wrong.json()["error"]
    nameless = post({"a": ASTRONAUT, "b": HALF, "decision": "same", "by": " "})
    assert nameless.status_code == 400 and "reviewer name" in nameless.json()["error"]
    not_json = requests.post(
        url, data="{", headers={**same_origin, "Content-Type": "application/json"}, timeout=10
    )
    assert not_json.status_code == 400
    huge = post({"a": "x" * 100_000, "b": HALF, "decision": "same", "by": "Aino"})
    assert huge.status_code == 413 and "error" in huge.json()
    assert decisions(db) == {}
    recorded = post({"a": ASTRONAUT, "b": HALF, "decision": "same", "by": "Aino"})
    assert recorded.status_code == 200 and recorded.json()["decision"]["decided_by"] == "Aino"
    assert len(decisions(db)) == 1

    bad_digest = requests.get(review.url + "/thumb/..%2Findex.sqlite", timeout=10)
    assert bad_digest.status_code in (400, 404) and "error" in bad_digest.json()
    assert requests.get(review.url + "/thumb/" + "A" * 64, timeout=10).status_code == 400
    assert requests.get(review.url + "/thumb/" + "0" * 64, timeout=10).status_code == 404
    thumb = requests.get(review.url + "/thumb/" + digest(db, HALF), timeout=10)
    assert thumb.headers["Content-Type"] == "image/jpeg"
    store = SQLiteStore(db)
    fingerprint = store.fingerprint(digest(db, HALF))
    store.close()
    assert fingerprint is not None and thumb.content == fingerprint.thumb
    limit = requests.get(review.url + "/api/review/queue?limit=lots", timeout=10)
    assert limit.status_code == 400
    assert requests.put(review.url + "/review", timeout=10).status_code == 405
    page = requests.get(review.url + "/review", timeout=10)
    assert "script-src 'nonce-" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.text and "https://" not in page.text, "nothing from elsewhere"
