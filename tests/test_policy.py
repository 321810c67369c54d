"""What the service accepts: filenames and MIME types."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkstore.config import Settings
from chunkstore.errors import DisallowedType, InvalidFilename
from chunkstore.policy import check_declared_type, clean_filename, type_problem, types_agree
from chunkstore.validator import detect_mime


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "...",
        "",
        "   ",
        "x\x00y",
        "shell.php.jpg",
        "evil.exe",
        "EVIL.EXE",
        ".htaccess",
        "run.sh",
        "con.txt",
        "LPT1",
        "a" * 256,
    ],
)
def test_clean_filename_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(InvalidFilename):
        clean_filename(name)


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("report.pdf", "report.pdf"),
        ("  spaced.txt  ", "spaced.txt"),
        ("Résumé (final).docx", "Résumé (final).docx"),
        ("what?.txt", "what_.txt"),
        ('a<b>c:"d".txt', "a_b_c__d_.txt"),
        ("tab\there.txt", "tab_here.txt"),
        ("archive.tar.gz", "archive.tar.gz"),
        ("e\u0301.txt", "\u00e9.txt"),
    ],
)
def test_clean_filename_keeps_safe_names_and_replaces_unsafe_characters(
    name: str, cleaned: str
) -> None:
    assert clean_filename(name) == cleaned


def test_the_dangerous_extension_refusal_names_every_one() -> None:
    with pytest.raises(InvalidFilename) as refused:
        clean_filename("x.php.exe.jpg")

    assert refused.value.extensions["extensions"] == ["php", "exe"]


@pytest.mark.parametrize(
    ("declared", "detected"),
    [
        ("image/png", "image/png"),
        ("application/octet-stream", "image/png"),
        ("application/json", "text/plain"),
        ("text/csv", "text/plain"),
        (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/zip",
        ),
        ("image/png", "application/x-empty"),
        ("image/svg+xml", "text/xml"),
    ],
)
def test_types_agree_when_the_detected_type_fits_the_declared_one(
    declared: str, detected: str
) -> None:
    assert types_agree(declared, detected)


@pytest.mark.parametrize(
    ("declared", "detected"),
    [
        ("image/png", "application/x-sharedlib"),
        ("image/png", "application/octet-stream"),
        ("image/png", "image/jpeg"),
        ("text/plain", "application/zip"),
        ("application/pdf", "text/plain"),
    ],
)
def test_types_disagree_when_the_bytes_contradict_the_declared_type(
    declared: str, detected: str
) -> None:
    assert not types_agree(declared, detected)


def test_an_executable_is_refused_whatever_was_declared() -> None:
    problem = type_problem("application/octet-stream", "application/x-executable", Settings())

    assert problem is not None and problem[0] == "disallowed-type"


def test_a_mismatch_is_reported_as_mime_mismatch() -> None:
    problem = type_problem("image/png", "image/jpeg", Settings())

    assert problem is not None and problem[0] == "mime-mismatch"


def test_an_allow_list_refuses_types_outside_it() -> None:
    settings = Settings(allowed_mime_types=("image/*",))

    assert type_problem("image/png", "image/png", settings) is None
    problem = type_problem("application/pdf", "application/pdf", settings)
    assert problem is not None and problem[0] == "disallowed-type"


def test_a_declared_executable_type_is_refused_at_init() -> None:
    with pytest.raises(DisallowedType):
        check_declared_type("application/x-executable", Settings())


def test_declared_types_are_normalized() -> None:
    assert check_declared_type("IMAGE/JPG; charset=binary", Settings()) == "image/jpeg"


def test_a_declared_type_that_is_not_a_mime_type_is_refused() -> None:
    with pytest.raises(DisallowedType):
        check_declared_type("not a type", Settings())


def test_text_that_libmagic_takes_for_plotter_commands_may_still_be_declared_text(
    tmp_path: Path,
) -> None:
    # Base64 text that happens to start with "PA": libmagic says HP-GL.
    path = tmp_path / "note.txt"
    path.write_bytes(b"PACNgjWG/ViGQ2xvdWRz" * 50)
    detected = detect_mime(path)

    assert detected == "application/vnd.hp-HPGL"
    assert types_agree("text/plain", detected)
    assert types_agree("text/csv", detected)
    assert not types_agree("image/png", detected)
