"""What the service accepts: filenames and MIME types."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chunkstore.config import Settings
from chunkstore.errors import DisallowedType, InvalidFilename
from chunkstore.events import UploadInitiated
from chunkstore.manifest import Assembled
from chunkstore.policy import check_declared_type, clean_filename, type_problem, types_agree
from chunkstore.session import replay
from chunkstore.validator import detect_mime, find_problem


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
    detected = detect_mime(path.read_bytes())

    assert detected == "application/vnd.hp-HPGL"
    assert types_agree("text/plain", detected)
    assert types_agree("text/csv", detected)
    assert not types_agree("image/png", detected)


# -- names that read as something they are not ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "character"),
    [
        ("x\u202egnp.js", "U+202E"),  # RIGHT-TO-LEFT OVERRIDE: shows as "xsj.png"
        ("x.exe\u200b", "U+200B"),  # ZERO WIDTH SPACE after the extension
        ("in\u200dvoice.pdf", "U+200D"),  # ZERO WIDTH JOINER
        ("\ufeffreport.pdf", "U+FEFF"),  # BOM
        ("x.e\u00adxe", "U+00AD"),  # SOFT HYPHEN
        ("a\u2066b\u2069.txt", "U+2066"),  # LEFT-TO-RIGHT ISOLATE
        ("x\u061c.txt", "U+061C"),  # ARABIC LETTER MARK
    ],
    ids=["rlo", "zwsp", "zwj", "bom", "soft-hyphen", "lri", "alm"],
)
def test_a_name_with_an_invisible_format_character_is_refused_and_says_which(
    name: str, character: str
) -> None:
    with pytest.raises(InvalidFilename) as refused:
        clean_filename(name)

    assert character in refused.value.extensions["characters"]
    assert character in refused.value.detail


def test_a_refusal_names_a_bounded_number_of_format_characters() -> None:
    name = "".join(chr(0x2060 + n) + "a" for n in range(5)) + "\u200b\u200c\u200d\u200e\u200f.txt"

    with pytest.raises(InvalidFilename) as refused:
        clean_filename(name * 20)

    assert len(refused.value.extensions["characters"]) == 8


@pytest.mark.parametrize(
    "separator",
    ["\u2215", "\u2044", "\uff0f", "\u29f8", "\uff3c", "\ufe68", "\u2216", "\u29f5", "\u2571"],
    ids=[
        "division-slash",
        "fraction-slash",
        "fullwidth-solidus",
        "big-solidus",
        "fullwidth-reverse-solidus",
        "small-reverse-solidus",
        "set-minus",
        "reverse-solidus-operator",
        "box-diagonal",
    ],
)
def test_a_character_drawn_like_a_path_separator_is_refused(separator: str) -> None:
    with pytest.raises(InvalidFilename, match="path separator"):
        clean_filename(f"..{separator}..{separator}etc{separator}passwd")
    with pytest.raises(InvalidFilename, match="path separator"):
        clean_filename(f"photos{separator}cat.jpg")


@pytest.mark.parametrize(
    "dot",
    ["\u2024", "\uff0e", "\ufe52", "\u3002", "\uff61", "\ua60e", "\u0701"],
    ids=[
        "one-dot-leader",
        "fullwidth-full-stop",
        "small-full-stop",
        "ideographic-full-stop",
        "halfwidth-ideographic-full-stop",
        "vai-full-stop",
        "syriac-full-stop",
    ],
)
def test_a_character_drawn_like_a_dot_cannot_hide_a_dangerous_extension(dot: str) -> None:
    with pytest.raises(InvalidFilename) as refused:
        clean_filename(f"invoice{dot}exe")
    assert refused.value.extensions["extensions"] == ["exe"]
    with pytest.raises(InvalidFilename):
        clean_filename(f"invoice{dot}php{dot}jpg")


def test_fullwidth_letters_in_an_extension_are_read_as_the_extension() -> None:
    with pytest.raises(InvalidFilename) as refused:
        clean_filename("setup.\uff45\uff58\uff45")

    assert refused.value.extensions["extensions"] == ["exe"]


def test_look_alike_dots_alone_are_a_relative_path_component() -> None:
    with pytest.raises(InvalidFilename, match="relative path component"):
        clean_filename("\uff0e\uff0e")


@pytest.mark.parametrize(
    "name",
    ["app.js", "x.JSE", "launcher.desktop", "site.url", "place.webloc", "run.command", "h.chm"],
)
def test_files_a_desktop_runs_or_follows_when_opened_are_refused(name: str) -> None:
    with pytest.raises(InvalidFilename, match="runs code"):
        clean_filename(name)


@pytest.mark.parametrize(
    "name",
    [
        "page.html",
        "page.htm",
        "page.xhtml",
        "saved.mht",
        "logo.svg",
        "議事録。最終版.txt",  # an ideographic full stop in ordinary Japanese
        "رسالة٠١.pdf",  # Arabic-Indic digits, one of them zero
        "naïve café.txt",
    ],
)
def test_documents_a_browser_renders_and_ordinary_names_in_other_scripts_are_kept(
    name: str,
) -> None:
    assert clean_filename(name) == unicodedata.normalize("NFC", name)


def test_the_validator_refuses_a_recorded_name_the_policy_no_longer_accepts() -> None:
    # A session recorded before the rule existed: completion applies today's policy.
    now = datetime(2030, 1, 1, tzinfo=UTC)
    state = replay(
        [
            UploadInitiated(
                owner="alice",
                filename="invoice.exe\u200b",
                total_size=3,
                mime_type="application/octet-stream",
                chunk_size=3,
                total_chunks=1,
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        ]
    )

    problem = find_problem(state, Assembled(3, "b" * 64, "s" * 64), "text/plain", Settings())

    assert problem is not None and problem[0] == "invalid-filename"


def test_an_executable_declared_as_an_image_is_a_mime_mismatch() -> None:
    problem = type_problem("image/png", "application/x-pie-executable", Settings())

    assert problem is not None and problem[0] == "mime-mismatch"
