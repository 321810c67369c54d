"""Bounds on what a client sends and on what the server answers, in one place.

Every string that reaches an event and every list a client may send has a maximum
here, and so has every list of chunk indexes an answer carries (README, "Limits",
documents each). A message that names a client value names it through ``shorten``, so
that an error never echoes a large input back.
"""

from __future__ import annotations

from chunkstore.errors import FieldTooLong, ListTooLong

#: A filename as sent, before cleaning (characters). The stored name is at most 255
#: bytes of UTF-8 (``policy.MAX_FILENAME_BYTES``); this only keeps the cleaning cheap.
MAX_FILENAME_INPUT = 1024
#: A declared MIME type (characters): RFC 6838 allows 127 for each of type and subtype.
MAX_MIME_TYPE = 255
#: A cancel reason (characters). Longer reasons are refused, not cut: the client
#: learns its text was not kept.
MAX_CANCEL_REASON = 1024
#: The tus ``Upload-Metadata`` header (bytes), as tusd bounds its metadata.
MAX_TUS_METADATA = 4096
#: Partial uploads one tus ``Upload-Concat: final;...`` may name.
MAX_CONCAT_PARTS = 100
#: Digests one ``POST /api/v1/chunks/missing`` may ask about.
MAX_DIGESTS = 10_000
#: A validation failure's detail as recorded in its event (characters, our own text).
MAX_FAILURE_DETAIL = 1024
#: Chunk indexes in one list of an answer (status, init, cancel, the 409 of complete).
MAX_LISTED_INDEXES = 10_000
#: ``[first, last]`` ranges in one range list of a status answer.
MAX_LISTED_RANGES = 1_000
#: How much of a client value a message quotes.
QUOTE_LENGTH = 64


def shorten(value: object, limit: int = QUOTE_LENGTH) -> str:
    """``value`` as text, cut to its first ``limit`` characters and its length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} characters)"


def quote(value: object, limit: int = QUOTE_LENGTH) -> str:
    """A client value quoted in a message: ``'abc'``, or ``'abc…'(N characters)``."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} characters)"


def check_length(field: str, value: str, limit: int) -> None:
    """Refuse a string over ``limit`` characters before any work is done with it."""
    if len(value) > limit:
        raise FieldTooLong(
            f"{field} is {len(value)} characters long; at most {limit} are allowed",
            field=field,
            limit=limit,
        )


def check_count(field: str, count: int, limit: int) -> None:
    """Refuse a list of more than ``limit`` items before any of them is looked at."""
    if count > limit:
        raise ListTooLong(
            f"{field} has {count} items; at most {limit} are allowed in one request",
            field=field,
            limit=limit,
        )
