"""schemathesis hooks for the contract test (``tests/schemathesis.toml`` loads them).

chunkstore reads two bodies that are bytes under media types schemathesis has no
serializer for: tus's ``application/offset+octet-stream`` and the batch frames'
``application/vnd.chunkstore.batch``. Both go on the wire exactly as
``application/octet-stream`` does, so they reuse its serializer.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias(
    ["application/offset+octet-stream", "application/vnd.chunkstore.batch"],
    "application/octet-stream",
)
