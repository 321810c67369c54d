"""Request and response bodies of the JSON API.

Request bodies refuse unknown fields: a misspelt field is a 400 naming it, not a
silently ignored setting. The constraints below are checked on decoding (a 400 naming
the field) and appear in the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

_HEX64 = "^[0-9a-fA-F]{64}$"
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Digest = Annotated[
    str,
    msgspec.Meta(
        pattern=_HEX64,
        description="BLAKE3-256 of the chunk's bytes, hex.",
        examples=["af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"],
    ),
]
Sha256 = Annotated[
    str,
    msgspec.Meta(
        pattern=_HEX64,
        description="SHA-256, hex.",
        examples=["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    ),
]
Count = Annotated[int, msgspec.Meta(ge=0)]
Size = Annotated[int, msgspec.Meta(ge=1)]


class DeclaredChunk(msgspec.Struct, forbid_unknown_fields=True):
    #: BLAKE3-256 hex of the chunk's bytes.
    digest: Digest
    size: Size


class InitBody(msgspec.Struct, forbid_unknown_fields=True):
    filename: str
    total_size: Count
    mime_type: str = "application/octet-stream"
    file_hash: Sha256 | None = None
    chunk_size: Size | None = None
    total_chunks: Count | None = None
    #: Manifest mode: every chunk of the file, in order (cut by the client, e.g. FastCDC);
    #: with ``chunk_count``, the first page of them (at most ``chunk_page_size``).
    chunks: list[DeclaredChunk] | None = None
    #: Manifest mode in pages: how many chunks the file has. The rest of the list is
    #: declared with ``POST /api/v1/upload/{upload_id}/chunk-list``.
    chunk_count: Count | None = None


class InitAnswer(msgspec.Struct):
    upload_id: str
    status: str
    filename: str
    total_size: int
    chunk_size: int
    total_chunks: int
    expires_at: datetime
    #: The first missing indexes (at most 10,000; see ``chunks_truncated``).
    missing_chunks: list[int]
    #: What to send: one index per distinct digest the server still needs (at most
    #: 10,000; ``GET status?from=next_from`` lists the rest).
    needed_chunks: list[int]
    missing_count: int
    needed_count: int
    chunks_truncated: bool
    next_from: int | None
    #: Chunks with a declared digest and size (manifest mode: the pages so far).
    declared_chunks: int
    #: Most chunks one request may declare.
    chunk_page_size: int
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


class ChunkPage(msgspec.Struct, forbid_unknown_fields=True):
    """The next page of a session's chunk list: the chunks at indexes ``start`` on."""

    start: int
    chunks: list[DeclaredChunk]


class ChunkPageAnswer(msgspec.Struct):
    upload_id: str
    status: str
    start: int
    declared_chunks: int
    total_chunks: int
    #: Indexes of this page still to send: one per digest neither you nor the session
    #: has (at most one page).
    needed_chunks: list[int]
    #: Indexes still to send in the whole session.
    needed_count: int
    chunk_page_size: int
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


class DigestList(msgspec.Struct, forbid_unknown_fields=True):
    digests: list[Digest]


class MissingDigests(msgspec.Struct):
    missing: list[str]


class ChunkBody(msgspec.Struct, forbid_unknown_fields=True):
    upload_id: str
    chunk_index: Count
    #: The chunk's bytes, base64.
    chunk_data: Annotated[str, msgspec.Meta(pattern=_BASE64, examples=["aGVsbG8="])]
    #: SHA-256 hex of the decoded bytes.
    checksum: Sha256


class UploadRef(msgspec.Struct, forbid_unknown_fields=True):
    upload_id: str


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    upload_id: str
    reason: str = ""


class QuotaAnswer(msgspec.Struct):
    #: Bytes counting towards the owner's quota: open sessions' declared sizes and
    #: completed (not deleted) files.
    used: int
    #: The quota (``CHUNKSTORE_QUOTA_BYTES``); null when there is none.
    limit: int | None


class StatusProgress(msgspec.Struct):
    """The seed's ``progress`` object: its clients resume from ``missing_chunks``."""

    percentage: float
    received_chunks: list[int]
    missing_chunks: list[int]
    total_chunks: int
    received_count: int
    missing_count: int


class StatusAnswer(msgspec.Struct):
    """A session's status. Its chunk lists and ranges are bounded and start at the
    ``from`` index asked for: each is complete up to ``next_from`` (None: to the end)."""

    upload_id: str
    status: str
    filename: str
    mime_type: str
    total_size: int
    chunk_size: int
    total_chunks: int
    #: ``[first, last]`` runs (inclusive), at most 1,000 each.
    received_ranges: list[tuple[int, int]]
    missing_ranges: list[tuple[int, int]]
    #: Index lists, at most 10,000 each.
    received_chunks: list[int]
    missing_chunks: list[int]
    needed_chunks: list[int]
    #: Full counts, whatever was cut.
    received_count: int
    missing_count: int
    needed_count: int
    chunks_truncated: bool
    next_from: int | None
    #: Chunks with a declared digest and size (manifest mode: the pages so far).
    declared_chunks: int
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int
    #: Percentage of the file's bytes stored, 0-100.
    percentage: float
    progress: StatusProgress
    created_at: datetime | None
    expires_at: datetime | None
    file_path: str | None = None
    sha256: str | None = None
    detected_mime: str | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    #: The asking owner's quota use (all its uploads, not only this one).
    quota: QuotaAnswer | None = None
