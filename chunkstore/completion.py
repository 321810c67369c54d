"""Completion: an upload's chunks become a manifest, a validated file, an event.

Under the upload's lock (a PATCH or another completion ends first): the chunks are read
in order and each re-hashed against its name while the whole-file hashes are computed
and the bytes streamed into a part of the files port; the manifest is written as an
object and recorded; the validator checks size, hashes, the type from the magic bytes
and the policy; only then is the part committed as the final file and
``UploadCompleted`` appended. Should that append fail, the file is withdrawn: an upload
is never both cancelled and published.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NoReturn

from chunkstore import commands
from chunkstore.bounds import MAX_FAILURE_DETAIL, shorten
from chunkstore.errors import ConcurrencyConflict, CorruptBlob, UploadNotActive, ValidationFailed
from chunkstore.events import KnownEvent, ManifestWritten, UploadCompleted
from chunkstore.events import ValidationFailed as ValidationFailedEvent
from chunkstore.files import FilePart
from chunkstore.manifest import Manifest, assemble
from chunkstore.session import SessionState, Status
from chunkstore.validator import HEAD_BYTES, detect_mime, find_problem
from chunkstore.views import Completion, completion_of

if TYPE_CHECKING:
    from chunkstore.application import UploadService


class Completer:
    """The ``complete`` command of an ``UploadService``."""

    def __init__(self, app: UploadService) -> None:
        self.app = app

    def complete_upload(self, owner: str, upload_id: str) -> Completion:
        """Write the manifest, validate, and materialize the final file (idempotent).

        Runs under the upload's lock, after the upload was found and its owner checked:
        no per-upload state, not even a lock, exists for an id that is not the caller's."""
        state = self.app.get(owner, upload_id)
        if state.status == Status.COMPLETED:
            return completion_of(state)
        commands.check_completable(state, self.app.clock())
        with self.app.store.locks.hold(upload_id, self.app.settings.lock_wait):
            state = self.app.get(owner, upload_id)
            if state.status == Status.COMPLETED:
                return completion_of(state)
            commands.check_completable(state, self.app.clock())
            part = self.app.store.files.writer(upload_id, state.filename)
            try:
                return self._complete(state, part)
            finally:
                part.abort()  # nothing once committed

    def _complete(self, state: SessionState, part: FilePart) -> Completion:
        chunks = state.ordered_chunks()
        try:
            assembled = assemble(self.app.store.blobs, chunks, part, HEAD_BYTES)
        except CorruptBlob as error:
            self._fail(state, "corrupt-chunk", error.detail)
        if state.manifest is None:
            manifest = Manifest(
                upload_id=state.upload_id,
                filename=state.filename,
                size=assembled.size,
                blake3=assembled.blake3,
                sha256=assembled.sha256,
                chunks=chunks,
            )
            ref = self.app.store.blobs.put(manifest.encode())
            state = self._append_or_settle(
                state,
                [ManifestWritten(ref.digest, assembled.size, assembled.blake3, assembled.sha256)],
            )
        elif (state.manifest.blake3, state.manifest.size) != (assembled.blake3, assembled.size):
            self._fail(state, "corrupt-chunk", "stored chunks no longer match the manifest")
        detected = detect_mime(assembled.head)
        problem = find_problem(state, assembled, detected, self.app.settings)
        if problem is not None:
            self._fail(state, *problem)
        location = part.commit()
        try:
            state = self._append_or_settle(state, [UploadCompleted(location, detected)])
        except BaseException:
            # Under the lock nothing else ends the upload meanwhile; a writer that took
            # no lock (a crash leftover's retry, an older version) may have. Never leave
            # a file for an upload the log does not call completed.
            self._withdraw(state.upload_id, location)
            raise
        return completion_of(state)

    def _withdraw(self, upload_id: str, location: str) -> None:
        """Remove a published final file unless the log says the upload completed into it."""
        with contextlib.suppress(Exception):  # the log unreadable: the file goes
            current = self.app.load(upload_id)
            if current.status == Status.COMPLETED and current.file_path == location:
                return
        self.app.store.files.remove(location)

    def _fail(self, state: SessionState, reason: str, detail: str) -> NoReturn:
        # Our own text, but it may quote a stored name or a blob's error: kept bounded.
        detail = shorten(detail, MAX_FAILURE_DETAIL)
        self._append_or_settle(state, [ValidationFailedEvent(reason=reason, detail=detail)])
        raise ValidationFailed(detail, reason=reason)

    def _append_or_settle(self, state: SessionState, new_events: list[KnownEvent]) -> SessionState:
        try:
            return self.app.append(state, new_events)
        except ConcurrencyConflict:
            # Only another process completing or cancelling the same upload gets here.
            current = self.app.load(state.upload_id)
            raise UploadNotActive(
                f"upload {state.upload_id} changed during completion (now {current.status})",
                status=current.status,
            ) from None
