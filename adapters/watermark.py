"""Incremental listing from a watermark in whole seconds, as the Drupal and
Nextcloud paginators share it; each pages by its platform's own key beside it.

A listing covers what changed at or after `since` (UNIX seconds; 0 for a full
listing) and leaves out `skip_ids`, handed out by the listing before at
exactly that second and unchanged since. When a listing starts, it asks the
platform once for its newest change: the `watermark`, never before `since`,
where the next listing starts. The ids this listing meets changed at exactly
the watermark's second are its `boundary`, the next listing's `skip_ids`: the
platforms keep whole seconds, so that second may not have been over when it
was read, and the next listing reads it again.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ["WatermarkCursor", "WatermarkPaginator"]


class WatermarkCursor(BaseModel):
    """The watermark's part of a cursor; a platform's cursor adds its paging
    position. A completed listing's cursor has only `since` and `skip_ids`."""

    model_config = ConfigDict(frozen=True)
    since: int = 0  # UNIX seconds: this listing covers what changed at or after it
    skip_ids: frozenset[str] = frozenset()  # listed before, at exactly `since`
    # Set when the listing starts: where the next incremental listing starts,
    # and the ids this listing has seen at exactly that second.
    watermark: int | None = None
    boundary: frozenset[str] = frozenset()


CursorT = TypeVar("CursorT", bound=WatermarkCursor)


class WatermarkPaginator(Generic[CursorT]):
    """The watermark's bookkeeping for a platform's paginator: `start` when
    the cursor has no watermark yet, `admit` for each item an answer holds,
    then `follow` to the next page or `finish`."""

    def __init__(self, cursor: CursorT) -> None:
        self.cursor = cursor
        self.finished = False
        self._boundary = set(cursor.boundary)

    @property
    def starting(self) -> bool:
        """Whether the listing still needs its watermark (its first page)."""
        return self.cursor.watermark is None

    def start(self, newest: int) -> None:
        """The watermark, from the newest change on the platform now."""
        since = self.cursor.since
        watermark = max(newest, since)
        # Already listed at that very second: still true next time.
        boundary = self.cursor.skip_ids if watermark == since else frozenset()
        self.cursor = self.cursor.model_copy(update={"watermark": watermark, "boundary": boundary})
        self._boundary = set(boundary)

    def admit(self, item_id: str, changed: int) -> bool:
        """Notes an item of the answer, changed at `changed`; whether to hand
        it out (not when the listing before did, and it is unchanged since)."""
        if changed == self.cursor.watermark:
            self._boundary.add(item_id)
        return not (changed == self.cursor.since and item_id in self.cursor.skip_ids)

    def follow(self, **position: Any) -> None:
        """Another page follows, at `position` (the platform's paging fields)."""
        update = {**position, "boundary": frozenset(self._boundary)}
        self.cursor = self.cursor.model_copy(update=update)

    def finish(self) -> None:
        """The listing is over: the next one starts at the watermark."""
        watermark = self.cursor.watermark
        assert watermark is not None  # set by `start`, before the first page
        self.cursor = type(self.cursor)(since=watermark, skip_ids=frozenset(self._boundary))
        self.finished = True
