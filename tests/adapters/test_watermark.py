"""The watermark Drupal and Nextcloud share (adapters.watermark): a listing
covers what changed at or after `since` and never hands out again what the
listing before handed out at that second; the next one starts at the newest
change the platform had when this one began."""

from __future__ import annotations

from adapters.watermark import WatermarkCursor, WatermarkPaginator


class Cursor(WatermarkCursor):
    after: int = 0  # a platform's paging position


def test_the_next_listing_starts_at_the_watermark_and_skips_its_second() -> None:
    paginator = WatermarkPaginator(Cursor())
    assert paginator.starting
    paginator.start(newest=120)
    assert not paginator.starting and paginator.cursor.watermark == 120
    assert paginator.admit("a", 100) and paginator.admit("b", 120)
    paginator.follow(after=2)
    assert paginator.cursor == Cursor(watermark=120, boundary=frozenset({"b"}), after=2)
    next_page = WatermarkPaginator(paginator.cursor)
    assert next_page.admit("c", 120) and not next_page.starting
    next_page.finish()
    assert next_page.finished
    assert next_page.cursor == Cursor(since=120, skip_ids=frozenset({"b", "c"}))


def test_what_was_handed_out_at_since_comes_only_when_changed_again() -> None:
    done = Cursor(since=120, skip_ids=frozenset({"b", "c"}))
    paginator = WatermarkPaginator(done)
    paginator.start(newest=120)  # nothing newer: that second's ids stay skipped
    assert paginator.cursor.boundary == done.skip_ids
    assert not paginator.admit("b", 120)
    assert paginator.admit("d", 120) and paginator.admit("c", 121)
    paginator.finish()
    assert paginator.cursor == Cursor(since=120, skip_ids=frozenset({"b", "c", "d"}))
    later = WatermarkPaginator(done)
    later.start(newest=130)  # a newer watermark: the old second's ids are not its
    assert later.cursor.boundary == frozenset()
    later.finish()
    assert later.cursor == Cursor(since=130)
