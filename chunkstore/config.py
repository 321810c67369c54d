"""Settings: one struct, read from the environment (``CHUNKSTORE_*``) or built in code."""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
#: Bounds of ``pack_size``: below 64 KiB every few chunks would take a file of their
#: own; above 4 GiB a repack (which rewrites a whole pack) would take too long.
MIN_PACK_SIZE = 64 * KiB
MAX_PACK_SIZE = 4 * GiB
#: What completion leaves of a file (``materialize``): ``copy`` a final file on disk,
#: ``none`` only the manifest (the file is read from its chunks).
MATERIALIZE_MODES = ("copy", "none")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path = Path("data")
    #: Sessions expire this long after init (seconds); chunks are then refused with 410.
    session_ttl: float = 24 * 3600.0
    #: Largest file a session may declare.
    max_file_size: int = 64 * GiB
    #: Largest chunk (and so the largest request body carrying one).
    max_chunk_size: int = 64 * MiB
    #: Largest batch request body (many chunks in one request).
    max_batch_size: int = 16 * MiB
    #: Chunk size used when init does not name one.
    default_chunk_size: int = 8 * MiB
    #: Most chunks one request may declare (init, or one page of the chunk list); the
    #: JSON body limit of those routes follows from it (128 bytes a chunk, plus 64 KiB).
    chunk_page_size: int = 10_000
    #: Sessions (active or assembling) one owner may hold at once.
    max_open_sessions: int = 100
    #: Bytes one owner may hold: the declared sizes of its open sessions plus its
    #: completed (not deleted) files. 0: no limit. Repeating content inside one upload
    #: is legitimate, but every repeat is written out in the final file, so this is
    #: what bounds a small upload that declares a huge file.
    quota_bytes: int = 1 * TiB
    #: Seconds completion, cancel and delete wait for another request on the same upload
    #: (a tus PATCH, another completion) to end before they answer 423.
    lock_wait: float = 30.0
    #: Temp files younger than this (seconds) survive the start-up sweep; raise it when
    #: several server processes share one data directory.
    temp_grace: float = 0.0
    #: MIME types accepted after detection; empty means anything not denied.
    allowed_mime_types: tuple[str, ...] = ()
    #: MIME types refused whatever the allow list says (executables and scripts).
    denied_mime_types: tuple[str, ...] = (
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-elf",
        "application/x-mach-binary",
        "application/x-dosexec",
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/vnd.microsoft.portable-executable",
        "application/x-sh",
        "application/x-shellscript",
        "text/x-shellscript",
        "text/x-php",
        "application/x-php",
        "application/x-httpd-php",
        "text/x-perl",
        "text/x-script.python",
        "text/x-python",
        "text/x-msdos-batch",
        "application/x-bat",
    )
    #: Seconds between the server's background gc runs; 0 switches them off.
    gc_interval: float = 3600.0
    #: gc keeps the chunks of cancelled, failed and expired sessions this many hours
    #: after they ended (so a user can still look into, or retry, a recent failure).
    gc_hours: float = 24.0
    #: gc never sweeps a blob younger than this (seconds): a chunk is written a moment
    #: before the event that references it is appended.
    gc_grace: float = 3600.0
    #: Serve ``GET /metrics``. Off: the route answers 404.
    metrics_enabled: bool = True
    #: When set, ``GET /metrics`` wants ``Authorization: Bearer <this>``; empty: no auth.
    metrics_token: str = ""

    #: Seconds a request may go without receiving a byte of its body before the server
    #: stops waiting (408): a client that goes silent without closing its connection
    #: would otherwise hold its socket, its temp file and, for tus, the upload's lock.
    body_idle_timeout: float = 30.0

    #: Origins a browser may upload from (CORS on ``/files/``, the tus endpoint); "*"
    #: for any. Empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()

    #: Where the event log, projections and tokens live: ``sqlite:///path`` or
    #: ``memory://``; empty: ``sqlite:///<data_dir>/chunkstore.sqlite3``.
    db_url: str = ""
    #: Where blobs, final files, tails and locks live: ``file:///path`` or ``memory://``;
    #: empty: ``file://<data_dir>``.
    blobs_url: str = ""
    #: Bytes a pack file grows to before it is sealed and a new one started (a chunk
    #: larger than this gets a pack of its own). 32 MiB: 32 files per GiB stored.
    pack_size: int = 32 * MiB
    #: gc rewrites a sealed pack once this share of its bytes is dead (records whose
    #: blobs were swept): above 0, at most 1.
    repack_dead: float = 0.2
    #: What completion materializes: ``copy``, a final file on disk beside the chunks
    #: (every completed byte stored twice, unless the filesystem shares the extents);
    #: ``none``, nothing: the manifest is the file and reads stream from the chunks.
    materialize: str = "copy"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "chunkstore.sqlite3"

    def replace(self, **changes: object) -> Settings:
        return msgspec.structs.replace(self, **changes)

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> Settings:
        """Settings from ``CHUNKSTORE_*`` variables; ``data_dir`` wins over the environment."""
        env = os.environ
        base = cls()
        changes: dict[str, object] = {
            "data_dir": Path(data_dir or env.get("CHUNKSTORE_DATA") or "data").resolve()
        }
        numeric = {
            "session_ttl": ("CHUNKSTORE_SESSION_TTL", float),
            "max_file_size": ("CHUNKSTORE_MAX_FILE_SIZE", int),
            "max_chunk_size": ("CHUNKSTORE_MAX_CHUNK_SIZE", int),
            "max_batch_size": ("CHUNKSTORE_MAX_BATCH_SIZE", int),
            "default_chunk_size": ("CHUNKSTORE_DEFAULT_CHUNK_SIZE", int),
            "chunk_page_size": ("CHUNKSTORE_CHUNK_PAGE_SIZE", int),
            "max_open_sessions": ("CHUNKSTORE_MAX_OPEN_SESSIONS", int),
            "quota_bytes": ("CHUNKSTORE_QUOTA_BYTES", int),
            "lock_wait": ("CHUNKSTORE_LOCK_WAIT", float),
            "temp_grace": ("CHUNKSTORE_TEMP_GRACE", float),
            "gc_interval": ("CHUNKSTORE_GC_INTERVAL", float),
            "gc_hours": ("CHUNKSTORE_GC_HOURS", float),
            "gc_grace": ("CHUNKSTORE_GC_GRACE", float),
            "body_idle_timeout": ("CHUNKSTORE_BODY_IDLE_TIMEOUT", float),
            "pack_size": ("CHUNKSTORE_PACK_SIZE", int),
            "repack_dead": ("CHUNKSTORE_REPACK_DEAD", float),
        }
        for field, (name, kind) in numeric.items():
            if env.get(name):
                changes[field] = kind(env[name])
        if env.get("CHUNKSTORE_ALLOWED_TYPES"):
            changes["allowed_mime_types"] = _split(env["CHUNKSTORE_ALLOWED_TYPES"])
        if "CHUNKSTORE_DENIED_TYPES" in env:
            changes["denied_mime_types"] = _split(env["CHUNKSTORE_DENIED_TYPES"])
        if env.get("CHUNKSTORE_METRICS"):
            changes["metrics_enabled"] = env["CHUNKSTORE_METRICS"].strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        if env.get("CHUNKSTORE_METRICS_TOKEN"):
            changes["metrics_token"] = env["CHUNKSTORE_METRICS_TOKEN"].strip()
        for field, name in (("db_url", "CHUNKSTORE_DB"), ("blobs_url", "CHUNKSTORE_BLOBS")):
            if env.get(name):
                changes[field] = env[name].strip()
        if env.get("CHUNKSTORE_MATERIALIZE"):
            changes["materialize"] = env["CHUNKSTORE_MATERIALIZE"].strip().lower()
        if env.get("CHUNKSTORE_CORS_ORIGINS"):
            changes["cors_origins"] = _split(env["CHUNKSTORE_CORS_ORIGINS"])
        settings = msgspec.structs.replace(base, **changes)
        if not (0 < settings.body_idle_timeout < math.inf):
            raise ValueError("CHUNKSTORE_BODY_IDLE_TIMEOUT must be a positive number of seconds")
        if not (MIN_PACK_SIZE <= settings.pack_size <= MAX_PACK_SIZE):
            raise ValueError(
                f"CHUNKSTORE_PACK_SIZE must be from {MIN_PACK_SIZE} to {MAX_PACK_SIZE} bytes"
            )
        if not (0 < settings.repack_dead <= 1):
            raise ValueError("CHUNKSTORE_REPACK_DEAD must be above 0 and at most 1")
        if settings.materialize not in MATERIALIZE_MODES:
            raise ValueError("CHUNKSTORE_MATERIALIZE must be copy or none")
        return settings


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())
