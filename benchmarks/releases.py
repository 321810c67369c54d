"""Real data nobody here wrote: consecutive releases of one public package's source
distribution, unpacked and re-tarred uncompressed, cached under
``~/.cache/chunkstore-bench``.

Re-tarring normalizes what differs between releases for reasons other than content:
compression (it hides shared bytes), the versioned top-level directory
("Django-5.1.1/"), member order, and owner and time stamps. Without that, every
512-byte tar header differs and no chunker can find anything shared; with it, the tars
are successive snapshots of one source tree, which is what dedup is for.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "chunkstore-bench"
DJANGO_RELEASES = ("5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.5")


def release_tars(
    package: str = "django", versions: tuple[str, ...] = DJANGO_RELEASES
) -> list[Path]:
    """Uncompressed tars of each release, downloaded once (PyPI, ``pip download``)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tars = []
    for version in versions:
        target = CACHE / f"{package}-{version}.normalized.tar"
        if not target.exists():
            _fetch_and_retar(package, version, target)
        tars.append(target)
    return tars


def _fetch_and_retar(package: str, version: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
                scratch,
                f"{package}=={version}",
            ],
            check=True,
        )
        (sdist,) = [p for p in Path(scratch).iterdir() if p.name.endswith((".tar.gz", ".tgz"))]
        partial = target.with_suffix(".part")
        with (
            tarfile.open(sdist, "r:gz") as source,
            tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as out,
        ):
            members = sorted(source.getmembers(), key=lambda m: _unversioned(m.name))
            for member in members:
                data = source.extractfile(member) if member.isfile() else None
                member.name = _unversioned(member.name)
                member.mtime = 0
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                member.pax_headers = {}
                out.addfile(member, data)
        partial.replace(target)


def _unversioned(name: str) -> str:
    """ "Django-5.1.1/django/__init__.py" -> "package/django/__init__.py"."""
    _, _, rest = name.partition("/")
    return f"package/{rest}" if rest else "package"
