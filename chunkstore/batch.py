"""The batch wire format: many chunks in one request body.

A batch body (``application/vnd.chunkstore.batch``) is a sequence of frames, each a
4-byte big-endian chunk index, a 4-byte big-endian length, then that many bytes. The
client writes it (``frame_header``) and the server reads it (``FrameReader``) from the
same definition. The chunk (the dedup unit, ~64 KiB with CDC) is not the request (the
transfer unit, ~8 MiB): a batch carries many chunks, each checked against the digest
its session declared.
"""

from __future__ import annotations

import struct

from chunkstore.errors import IncompleteBody

MEDIA_TYPE = "application/vnd.chunkstore.batch"
FRAME_HEADER = struct.Struct(">II")


def frame_header(index: int, length: int) -> bytes:
    return FRAME_HEADER.pack(index, length)


def batch_length(sizes: list[int]) -> int:
    """The length of a batch body carrying chunks of these sizes."""
    return sum(FRAME_HEADER.size + size for size in sizes)


class FrameReader:
    """Cuts a batch body into frames as its pieces arrive, without copying: each frame's
    bytes reach ``frame_data`` as views of the pieces. Subclasses act on the frames."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0
        self._in_frame = False

    def frame_started(self, index: int, length: int) -> None:
        """A frame's header was read (before any of its bytes)."""

    def frame_data(self, data: memoryview) -> None:
        """Some of the current frame's bytes, in order."""

    def frame_ended(self) -> None:
        """The current frame's last byte was read."""

    def feed(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        while view:
            if not self._in_frame:
                needed = FRAME_HEADER.size - len(self._header)
                self._header += view[:needed]
                view = view[needed:]
                if len(self._header) == FRAME_HEADER.size:
                    index, length = FRAME_HEADER.unpack(self._header)
                    self._header.clear()
                    self.frame_started(index, length)
                    self._in_frame, self._remaining = True, length
                    if length == 0:
                        self._end_frame()
                continue
            take = view[: self._remaining]
            self.frame_data(take)
            self._remaining -= len(take)
            view = view[len(take) :]
            if self._remaining == 0:
                self._end_frame()

    def _end_frame(self) -> None:
        self._in_frame = False
        self.frame_ended()

    def finish(self) -> None:
        """The body ended: ``IncompleteBody`` if it ended inside a frame."""
        if self._in_frame or self._header:
            raise IncompleteBody("the batch body ended inside a frame")
