"""What the service accepts: filenames, extensions and MIME types.

Checked twice: at init, so a request that can never succeed is refused before any byte
is sent, and again by the validator on the bytes themselves (the client's claims are
only claims).
"""

from __future__ import annotations

import re
import unicodedata

from chunkstore.bounds import quote
from chunkstore.config import Settings
from chunkstore.errors import DisallowedType, InvalidFilename

MAX_FILENAME_BYTES = 255

#: Extensions that run code on a desktop or a web server. Refused anywhere in the name,
#: so "invoice.php.jpg" (a classic way past an extension check) is refused too.
DANGEROUS_EXTENSIONS = frozenset(
    [
        "exe",
        "dll",
        "com",
        "bat",
        "cmd",
        "scr",
        "pif",
        "msi",
        "msp",
        "cpl",
        "hta",
        "jar",
        "vbs",
        "vbe",
        "wsf",
        "wsh",
        "ps1",
        "psm1",
        "lnk",
        "reg",
        "sh",
        "bash",
        "zsh",
        "ksh",
        "csh",
        "elf",
        "so",
        "dylib",
        "app",
        "apk",
        "php",
        "php3",
        "php4",
        "php5",
        "php7",
        "php8",
        "phtml",
        "phar",
        "pht",
        "shtml",
        "jsp",
        "jspx",
        "asp",
        "aspx",
        "asa",
        "cer",
        "cgi",
        "pl",
        "htaccess",
    ]
)

_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')


def clean_filename(name: str) -> str:
    """The name a file is stored under, or ``InvalidFilename``.

    Path separators and ".." components are refused rather than stripped: a client that
    sends "../../etc/passwd" is wrong, and guessing what it meant hides the error.
    Characters that are unsafe on common filesystems are replaced with "_".
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidFilename("filename is empty")
    name = unicodedata.normalize("NFC", name.strip())
    if "\x00" in name:
        raise InvalidFilename("filename contains a NUL byte")
    if "/" in name or "\\" in name:
        raise InvalidFilename("filename must not contain a path separator")
    if name in (".", "..") or name.strip(".") == "":
        raise InvalidFilename("filename must not be a relative path component")
    cleaned = _UNSAFE_CHARS.sub("_", name)
    if len(cleaned.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise InvalidFilename(f"filename is longer than {MAX_FILENAME_BYTES} bytes")
    stem = cleaned.split(".")[0].lower()
    if stem in _WINDOWS_RESERVED:
        raise InvalidFilename(f"filename {cleaned!r} is a reserved device name")
    dangerous = dangerous_extensions(cleaned)
    if dangerous:
        raise InvalidFilename(
            f"filename {cleaned!r} has an extension that runs code: .{', .'.join(dangerous)}",
            extensions=dangerous,
        )
    return cleaned


def dangerous_extensions(name: str) -> list[str]:
    """Every dangerous extension in ``name``, including inner ones ("a.php.jpg")."""
    parts = name.lower().split(".")
    # parts[0] is the stem; for a hidden file (".htaccess") it is empty and the name
    # itself is the extension.
    return [part.strip() for part in parts[1:] if part.strip() in DANGEROUS_EXTENSIONS]


def normalize_mime(mime: str) -> str:
    base = mime.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def check_declared_type(mime: str, settings: Settings) -> str:
    """Refuse at init a declared type the policy could never accept."""
    mime = normalize_mime(mime or "application/octet-stream")
    if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", mime):
        raise DisallowedType(f"{quote(mime)} is not a MIME type")
    if mime in settings.denied_mime_types:
        raise DisallowedType(f"files of type {mime} are not accepted")
    allow_list = settings.allowed_mime_types
    if allow_list and mime != "application/octet-stream" and not _allowed(mime, allow_list):
        raise DisallowedType(f"files of type {mime} are not accepted")
    return mime


def type_problem(declared: str, detected: str, settings: Settings) -> tuple[str, str] | None:
    """(reason, detail) when detected bytes break policy, else None."""
    declared = normalize_mime(declared)
    detected = normalize_mime(detected)
    if detected in settings.denied_mime_types:
        return "disallowed-type", f"content is {detected}, which is not accepted"
    if settings.allowed_mime_types and not _allowed(detected, settings.allowed_mime_types):
        return "disallowed-type", f"content is {detected}, which is not in the allowed types"
    if not types_agree(declared, detected):
        return "mime-mismatch", f"declared {declared} but the content is {detected}"
    return None


def types_agree(declared: str, detected: str) -> bool:
    """Whether content detected as ``detected`` may be stored as ``declared``.

    Exact match, or the client declared no real type, or libmagic only knows a more
    generic family (plain text for a text format, zip for an office document).
    """
    if declared == detected or declared == "application/octet-stream":
        return True
    if detected in ("text/plain", *_TEXT_GUESSES) and _is_textual(declared):
        return True
    if detected == "application/zip" and declared in _ZIP_CONTAINERS:
        return True
    if detected in ("application/x-empty", "inode/x-empty"):
        return True  # an empty file has no magic number to contradict anything
    return detected in _COMPATIBLE.get(declared, ())


def _allowed(mime: str, allowed: tuple[str, ...]) -> bool:
    for pattern in allowed:
        if pattern == mime or (pattern.endswith("/*") and mime.startswith(pattern[:-1])):
            return True
    return False


def _is_textual(mime: str) -> bool:
    return (
        mime.startswith("text/") or mime in _TEXTUAL_APPLICATION or mime.endswith(("+json", "+xml"))
    )


_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
    "application/x-zip-compressed": "application/zip",
    "audio/mp3": "audio/mpeg",
    "application/x-gzip": "application/gzip",
    "text/json": "application/json",
    "text/xml": "application/xml",
}
_TEXTUAL_APPLICATION = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/sql",
        "application/x-ndjson",
        "application/csv",
        "image/svg+xml",
    }
)
_ZIP_CONTAINERS = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/epub+zip",
        "application/java-archive",
    }
)
#: Text formats libmagic names from a couple of letters at the start of a file: it calls
#: plain text starting with "PA", "IN" or "NP" (about 0.1% of random base64) HP-GL
#: plotter commands. Such content is still text, so a textual declared type stands.
_TEXT_GUESSES = ("application/vnd.hp-HPGL",)

_COMPATIBLE: dict[str, tuple[str, ...]] = {
    "application/json": ("application/json", "text/plain"),
    "application/xml": ("text/xml", "text/plain"),
    "image/svg+xml": ("image/svg", "text/xml", "application/xml"),
    "text/csv": ("application/csv",),
    "text/html": ("text/xml",),
    "application/x-tar": ("application/x-ustar",),
    "application/gzip": ("application/x-gzip",),
    "audio/wav": ("audio/x-wav",),
    "audio/x-wav": ("audio/wav",),
    "video/mp4": ("video/quicktime", "audio/mp4"),
}
