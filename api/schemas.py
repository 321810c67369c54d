"""Request and response bodies of the JSON API.

Request bodies refuse unknown fields: a misspelt field is a 400 naming it, not a
silently ignored setting.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class DeclaredChunk(msgspec.Struct, forbid_unknown_fields=True):
    #: BLAKE3-256 hex of the chunk's bytes.
    digest: str
    size: int


class InitBody(msgspec.Struct, forbid_unknown_fields=True):
    filename: str
    total_size: int
    mime_type: str = "application/octet-stream"
    file_hash: str | None = None
    chunk_size: int | None = None
    total_chunks: int | None = None
    #: Manifest mode: every chunk of the file, in order (cut by the client, e.g. FastCDC).
    chunks: list[DeclaredChunk] | None = None


class InitAnswer(msgspec.Struct):
    upload_id: str
    status: str
    filename: str
    total_size: int
    chunk_size: int
    total_chunks: int
    expires_at: datetime
    missing_chunks: list[int]
    #: What to send: one index per distinct digest the server still needs.
    needed_chunks: list[int]
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


class DigestList(msgspec.Struct, forbid_unknown_fields=True):
    digests: list[str]


class MissingDigests(msgspec.Struct):
    missing: list[str]


class ChunkBody(msgspec.Struct, forbid_unknown_fields=True):
    upload_id: str
    chunk_index: int
    #: The chunk's bytes, base64.
    chunk_data: str
    #: SHA-256 hex of the decoded bytes.
    checksum: str


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


class StatusAnswer(msgspec.Struct):
    upload_id: str
    status: str
    filename: str
    mime_type: str
    total_size: int
    chunk_size: int
    total_chunks: int
    received_chunks: list[int]
    missing_chunks: list[int]
    needed_chunks: list[int]
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int
    progress: float
    created_at: datetime | None
    expires_at: datetime | None
    file_path: str | None = None
    sha256: str | None = None
    detected_mime: str | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    #: The asking owner's quota use (all its uploads, not only this one).
    quota: QuotaAnswer | None = None
