"""The tail port: the durable, not yet chunked end of an offset stream.

An offset-stream upload (tus, the IETF resumable-upload draft) arrives as bytes at
increasing offsets, which the server cuts into content-defined chunks. Every chunk but
the last is final as soon as it is cut; the last is final only once the stream ends.
Until then it is the upload's *tail*, kept here, durable before the event that records
its length (``TusTailStaged``) is appended: ``Upload-Offset`` is then a replay of the log
like everything else. A tail is named by the stream offset where it starts (``base``):
a new tail is written under its own base before it becomes current, so a crash midway
leaves the current one intact, and leftovers of other bases are ignored, then discarded.
"""

from __future__ import annotations

from typing import Protocol


class TailStore(Protocol):
    def read(self, upload_id: str, base: int, size: int) -> bytes:
        """The first ``size`` bytes of the tail at ``base`` (b"" for size 0);
        ``ChunkstoreError`` if fewer are there than were acknowledged."""
        ...

    def extend(self, upload_id: str, base: int, old_size: int, data: bytes) -> None:
        """Append ``data`` to the tail at ``base`` after its first ``old_size`` bytes
        (anything past them is an unacknowledged leftover, overwritten); durable."""
        ...

    def write(self, upload_id: str, base: int, data: bytes) -> None:
        """A new tail starting at ``base``; durable on return."""
        ...

    def discard(self, upload_id: str, keep_base: int | None = None) -> int:
        """Remove the upload's tails but the one at ``keep_base``; how many went."""
        ...

    def uploads(self) -> dict[str, int]:
        """Upload id -> how many tails it has, for every upload that has any (gc)."""
        ...
