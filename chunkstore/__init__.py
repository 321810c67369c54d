"""chunkstore: resumable, deduplicating file uploads.

Content-addressed chunks (BLAKE3), event-sourced upload sessions, and a validator that
turns a manifest into a final file. This package holds no HTTP code; see ``api/``.
"""

__version__ = "0.1.0"
