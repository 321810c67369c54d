"""A small filesystem of its own for a test that must run out of space for real."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

MiB = 1024 * 1024


class SmallFilesystem:
    """A tmpfs of ``size`` bytes, to run out of space for real.

    It is mounted at ``mount_point`` in a mount namespace of its own (inside a user
    namespace when not root, so no privilege is needed), held by a sleeping process:
    nothing is ever left mounted on the host, whatever happens to the test. Processes
    that must see it at ``mount_point`` (a server, the CLI) run under ``enter()``; the
    test itself reads and writes plain files through ``path``, the holder's view of it.
    (Not SQLite, nor anything that resolves paths: they would follow ``/proc/PID/root``
    back to the host's directory.)
    """

    def __init__(self, mount_point: Path, size: int) -> None:
        self.mount_point = mount_point
        self.size = size
        self.holder: subprocess.Popen[str] | None = None
        self.path = mount_point
        self.user_namespace = os.geteuid() != 0

    def __enter__(self) -> SmallFilesystem:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        namespaces = ["--mount", "--propagation", "private"]
        if self.user_namespace:
            namespaces = ["--user", "--map-root-user", *namespaces]
        script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && echo mounted && exec sleep infinity'
        try:
            self.holder = subprocess.Popen(
                [
                    "unshare",
                    *namespaces,
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(self.size),
                    str(self.mount_point),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError:
            pytest.fail("this test needs unshare (util-linux) to mount a small filesystem")
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "mounted":
            self.holder.kill()
            _, errors = self.holder.communicate(timeout=10)
            pytest.fail(
                "cannot mount a small tmpfs in a mount namespace (as root, or in a user"
                f" namespace without root) for this test: {errors.strip()}"
            )
        self.path = Path(f"/proc/{self.holder.pid}/root") / self.mount_point.relative_to("/")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.communicate(timeout=10)
            self.holder = None

    def enter(self) -> list[str]:
        """The command prefix that runs a command where the filesystem is mounted."""
        assert self.holder is not None
        namespaces = ["--user", "--preserve-credentials"] if self.user_namespace else []
        return ["nsenter", "--target", str(self.holder.pid), *namespaces, "--mount", "--"]

    def fill(self) -> Path:
        """Write a file until the filesystem has no room left; returns its path."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as out:
            for block in (MiB, 64 * 1024, 4096, 512, 1):
                try:
                    while True:
                        out.write(b"\0" * block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
        return filler
