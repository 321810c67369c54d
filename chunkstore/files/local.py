"""Final files in a local directory: ``<root>/files/<upload_id>/<filename>``.

A part is written under ``<root>/tmp/files/`` (the same filesystem, so publishing it is
a rename), fsynced, then renamed into place and its directory fsynced: a crash leaves
either no file or a whole one. Parts a crash left behind are swept at start-up
(``sweep_temp_files``) and by gc once their upload has ended (``discard_parts``).

Parts also take kernel copies (``FileCopies``): ``os.copy_file_range`` from a blob's
place in a pack straight into the part, which shares the extents on filesystems that
can (btrfs, XFS with reflink) and copies inside the kernel elsewhere (ext4). Where the
kernel refuses (another filesystem on older kernels, a filesystem without it), the copy
falls back to ``pread``/``pwrite`` and the files port stops trying.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from chunkstore.blobs import BlobLocation
from chunkstore.durable import (
    fsync_directory,
    make_durable_dirs,
    publish,
    remove_durably,
    start_writeback,
    write_all,
)
from chunkstore.errors import CorruptBlob, full_disk_guard
from chunkstore.files import FileEntry, location_of

log = logging.getLogger("chunkstore.files")

#: What ``copy_file_range`` fails with when it cannot copy between these two files.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
#: Bytes one ``pread``/``pwrite`` of the fallback copy moves.
FALLBACK_PIECE = 1024 * 1024
#: Bytes of copies after which a part's writeback is started (``sync_file_range``).
WRITEBACK_BYTES = 8 * 1024 * 1024


class LocalFilePart:
    def __init__(self, sink: LocalFiles, upload_id: str, filename: str) -> None:
        self._sink = sink
        self.location = location_of(upload_id, filename)
        self.path = sink.parts_dir / f"assemble-{upload_id}-{secrets.token_hex(6)}.part"
        #: The file the last copy came from: a file's chunks mostly lie in one pack.
        self._source: tuple[str, int] | None = None
        #: Where the copies' writeback has been started up to (``_write_back``).
        self._written_back = 0
        with full_disk_guard("the assembled file"):
            self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115

    def write(self, data: bytes | memoryview) -> None:
        assert self._file is not None, "part already finished"
        with full_disk_guard("the assembled file"):
            write_all(self._file.write, data)

    def copy_from(self, source: BlobLocation) -> None:
        assert self._file is not None, "part already finished"
        fd_in = self._source_fd(source.path)
        with full_disk_guard("the assembled file"):
            self._file.flush()  # copies land after what was written, in order
            end = self._file.tell()
            done = 0
            while done < source.length:
                copied = self._sink.copy_range(
                    fd_in, self._file.fileno(), source.length - done, source.offset + done, end
                )
                if copied == 0:
                    raise CorruptBlob(f"{os.path.basename(source.path)} ends inside a blob")
                done += copied
                end += copied
            self._file.seek(end)
            self._write_back(end)

    def _write_back(self, end: int) -> None:
        """The final file is fsynced once whole: its writeback starts as it is copied,
        ``WRITEBACK_BYTES`` at a time (one ``sync_file_range`` per 64 KiB chunk took
        13% of a tus upload's server time)."""
        if end - self._written_back >= WRITEBACK_BYTES:
            assert self._file is not None
            start_writeback(self._file.fileno(), self._written_back, end - self._written_back)
            self._written_back = end

    def _source_fd(self, path: str) -> int:
        if self._source is not None and self._source[0] == path:
            return self._source[1]
        self._close_source()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._source = (path, fd)
        return fd

    def _close_source(self) -> None:
        if self._source is not None:
            os.close(self._source[1])
            self._source = None

    def open_written(self) -> BinaryIO:
        assert self._file is not None, "part already finished"
        self._file.flush()
        return open(self.path, "rb")  # noqa: SIM115

    def commit(self) -> str:
        assert self._file is not None, "part already finished"
        try:
            with full_disk_guard("the completed file"):
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                publish(self.path, self._sink.root / self.location)
        except BaseException:
            self.abort()
            raise
        return self.location

    def abort(self) -> None:
        self._close_source()
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalFiles:
    """``FileSink`` (and ``TempFiles``) in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.parts_dir = self.root / "tmp" / "files"
        make_durable_dirs(self.files_dir)
        make_durable_dirs(self.parts_dir)
        #: Until ``copy_file_range`` has failed here once, copies go through the kernel.
        self.kernel_copy = True
        #: Bytes copied by ``copy_file_range`` and by the ``pread``/``pwrite`` fallback.
        self.copied_by_kernel = 0
        self.copied_by_fallback = 0

    def copy_range(
        self, fd_in: int, fd_out: int, count: int, offset_in: int, offset_out: int
    ) -> int:
        """Copy up to ``count`` bytes between two files at these offsets; how many."""
        if self.kernel_copy:
            try:
                copied = os.copy_file_range(fd_in, fd_out, count, offset_in, offset_out)
            except OSError as error:
                if error.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel_copy = False
                log.info(
                    "copy_file_range unsupported here; final files are copied with writes",
                    extra={"errno": errno.errorcode.get(error.errno or 0, error.errno)},
                )
            else:
                self.copied_by_kernel += copied
                return copied
        data = memoryview(os.pread(fd_in, min(count, FALLBACK_PIECE), offset_in))
        written = 0
        while written < len(data):
            written += os.pwrite(fd_out, data[written:], offset_out + written)
        self.copied_by_fallback += len(data)
        return len(data)

    def _path(self, location: str) -> Path:
        path = (self.root / location).resolve()
        if not path.is_relative_to(self.files_dir.resolve()):
            raise ValueError(f"not a final file's location: {location[:80]!r}")
        return path

    def writer(self, upload_id: str, filename: str) -> LocalFilePart:
        return LocalFilePart(self, upload_id, filename)

    def copying_writer(self, upload_id: str, filename: str) -> LocalFilePart:
        return LocalFilePart(self, upload_id, filename)

    def open(self, location: str) -> BinaryIO:
        return open(self._path(location), "rb")  # noqa: SIM115

    def size(self, location: str) -> int | None:
        try:
            path = self._path(location)
            return path.stat().st_size if path.is_file() else None
        except OSError:
            return None

    def remove(self, location: str) -> None:
        remove_durably(self._path(location))

    def quarantine(self, location: str, into: str) -> str | None:
        source = self._path(location)
        directory = self.root / into / source.parent.name
        make_durable_dirs(directory)
        target = directory / source.name
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return None
        fsync_directory(directory)
        return str(target.relative_to(self.root))

    def scan(self) -> Iterator[FileEntry]:
        found = []
        for directory, _, names in os.walk(self.files_dir):
            for name in names:
                path = Path(directory) / name
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    found.append(
                        FileEntry(str(path.relative_to(self.root)), stat.st_size, stat.st_mtime)
                    )
        yield from sorted(found, key=lambda entry: entry.location)

    def parts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in os.scandir(self.parts_dir):
            kind, _, rest = entry.name.partition("-")
            upload_id = rest.partition("-")[0]
            if kind == "assemble" and upload_id:
                found[upload_id] = found.get(upload_id, 0) + 1
        return found

    def discard_parts(self, upload_id: str) -> int:
        removed = 0
        for entry in os.scandir(self.parts_dir):
            if entry.name.startswith(f"assemble-{upload_id}-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def sweep_temp_files(self, older_than: float = 0.0) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.parts_dir):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed
