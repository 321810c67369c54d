"""Settings: one struct, read from the environment (``CHUNKSTORE_*``) or built in code."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path = Path("data")
    #: Sessions expire this long after init (seconds); chunks are then refused with 410.
    session_ttl: float = 24 * 3600.0
    #: Largest file a session may declare.
    max_file_size: int = 64 * GiB
    #: Largest chunk (and so the largest request body carrying one).
    max_chunk_size: int = 64 * MiB
    #: Largest batch request body (many chunks in one request).
    max_batch_size: int = 32 * MiB
    #: Chunk size used when init does not name one.
    default_chunk_size: int = 8 * MiB
    #: Sessions (active or assembling) one owner may hold at once.
    max_open_sessions: int = 100
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
            "max_open_sessions": ("CHUNKSTORE_MAX_OPEN_SESSIONS", int),
            "temp_grace": ("CHUNKSTORE_TEMP_GRACE", float),
        }
        for field, (name, kind) in numeric.items():
            if env.get(name):
                changes[field] = kind(env[name])
        if env.get("CHUNKSTORE_ALLOWED_TYPES"):
            changes["allowed_mime_types"] = _split(env["CHUNKSTORE_ALLOWED_TYPES"])
        if "CHUNKSTORE_DENIED_TYPES" in env:
            changes["denied_mime_types"] = _split(env["CHUNKSTORE_DENIED_TYPES"])
        return msgspec.structs.replace(base, **changes)


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())
