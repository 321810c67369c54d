"""The validator: checks an assembled upload against what init declared and the policy.

It trusts nothing the client said: the size and hashes come from re-reading the stored
chunks, the type from the file's magic bytes (libmagic via python-magic).
"""

from __future__ import annotations

import threading

import magic

from chunkstore.config import Settings
from chunkstore.errors import InvalidFilename
from chunkstore.manifest import Assembled
from chunkstore.policy import clean_filename, type_problem
from chunkstore.session import SessionState

# A libmagic handle is not safe to share between threads.
_magic_lock = threading.Lock()
_magic_mime = magic.Magic(mime=True)
_magic_text = magic.Magic(mime=False)


#: libmagic calls a file whose first bytes decode as plausible x86 code a "DOS
#: executable (COM)" or a "COM executable for DOS". COM files have no header, so these
#: are guesses that about 1% of random or encrypted data also earns. Such a file is
#: unknown binary data, not an executable; MZ/PE executables have a real header and
#: stay detected as executables.
def _is_com_guess(description: str) -> bool:
    return "COM" in description and "MZ" not in description and "PE32" not in description


#: How much of a file libmagic looks at: its own limit (7 MiB in file 5.44).
HEAD_BYTES: int = _magic_mime.getparam(magic.MAGIC_PARAM_BYTES_MAX)


def detect_mime(head: bytes) -> str:
    """The MIME type of a file from its first ``HEAD_BYTES`` bytes."""
    with _magic_lock:
        mime = str(_magic_mime.from_buffer(head))
        com_guess = mime == "application/x-dosexec" and _is_com_guess(
            str(_magic_text.from_buffer(head))
        )
        return "application/octet-stream" if com_guess else mime


def find_problem(
    state: SessionState, assembled: Assembled, detected_mime: str, settings: Settings
) -> tuple[str, str] | None:
    """(reason, detail) for the first check the upload fails, or None when it passes."""
    if assembled.size != state.total_size:
        return "size-mismatch", f"declared {state.total_size} bytes, assembled {assembled.size}"
    if state.file_hash and assembled.sha256 != state.file_hash:
        return "hash-mismatch", f"declared SHA-256 {state.file_hash}, content is {assembled.sha256}"
    try:
        clean_filename(state.filename)
    except InvalidFilename as error:
        return "invalid-filename", error.detail
    return type_problem(state.mime_type, detected_mime, settings)
