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
#:
#: Also refused: what a desktop runs or follows when the file is opened, though it is
#: text: ``.js``, ``.jse``, ``.wsc``, ``.sct`` (Windows Script Host runs them), launchers
#: (``.desktop``'s ``Exec=``, ``.url``/``.website``/``.webloc``/``.fileloc``/``.inetloc``,
#: ``.scf``, ``.command``, ``.terminal``, ``.tool``) and compiled help (``.chm``) or
#: management consoles (``.msc``). Such files have little reason to be in a file store.
#: Accepted: ``.html``, ``.htm``, ``.xhtml``, ``.mht``, ``.svg``. They run script only
#: when a browser renders them; downloads are sent as attachments, so never rendered in
#: the service's origin, and they are among the commonest documents (saved pages,
#: reports, icons). Where files are served inline elsewhere, their detected types can be
#: added to ``CHUNKSTORE_DENIED_TYPES``.
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
        "js",
        "jse",
        "wsc",
        "sct",
        "desktop",
        "url",
        "website",
        "webloc",
        "fileloc",
        "inetloc",
        "scf",
        "command",
        "terminal",
        "tool",
        "chm",
        "msc",
    ]
)

_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')

#: Characters drawn like "/" or "\\" that NFKC leaves alone (those it maps to a real
#: separator, such as U+FF0F FULLWIDTH SOLIDUS or U+FE68 SMALL REVERSE SOLIDUS, are found
#: through NFKC). From Unicode's confusables for SOLIDUS and REVERSE SOLIDUS, symbols only:
#: letters and ideographs that resemble a stroke (KATAKANA NO) are text.
_SEPARATOR_LOOKALIKES = frozenset(
    "\u2215\u2044\u29f8\u2571\u27cb\u2041\u1735"  # DIVISION, FRACTION, BIG SOLIDUS, ...
    "\u2216\u29f5\u29f9\u2572\u27cd"  # SET MINUS, REVERSE SOLIDUS OPERATOR, ...
)
#: Characters drawn like "." that NFKC leaves alone (U+2024 ONE DOT LEADER, U+FF0E
#: FULLWIDTH FULL STOP and U+FE52 SMALL FULL STOP become "." through NFKC; U+FF61 becomes
#: U+3002). They are not refused: U+3002 IDEOGRAPHIC FULL STOP is ordinary punctuation in
#: Chinese and Japanese names. They only count as dots where extensions are looked for.
_DOT_LOOKALIKES = str.maketrans(dict.fromkeys("\u3002\u0701\u0702\ua60e\ua4f8\u0660\u06f0", "."))
#: How many distinct offending characters a refusal names.
_NAMED_CHARACTERS = 8


def clean_filename(name: str) -> str:
    """The name a file is stored under, or ``InvalidFilename``.

    Path separators and ".." components are refused rather than stripped: a client that
    sends "../../etc/passwd" is wrong, and guessing what it meant hides the error.
    Characters that are unsafe on common filesystems are replaced with "_".

    The name is normalized to NFC first, so that every later check sees one spelling.
    Format characters (Unicode category Cf: bidirectional overrides, zero-width spaces and
    joiners, the BOM, the soft hyphen) are refused: they are invisible, so they make a name
    read as something it is not ("x\\u202egnp.js" shows as "xsj.png") or slip an extension
    past a check ("x.exe\\u200b") that a tool which drops them would then see. Characters
    drawn like a slash are refused as separators are; characters drawn like a dot, and
    compatibility forms (NFKC: fullwidth letters and dots), count when extensions are
    looked for, so "x\\u2024exe" and "x.\\uff45\\uff58\\uff45" are refused like "x.exe".
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidFilename("filename is empty")
    name = unicodedata.normalize("NFC", name.strip())
    if "\x00" in name:
        raise InvalidFilename("filename contains a NUL byte")
    invisible = format_characters(name)
    if invisible:
        raise InvalidFilename(
            f"filename contains invisible format characters ({', '.join(invisible)});"
            " send the name without them",
            characters=invisible,
        )
    compatible = unicodedata.normalize("NFKC", name)
    if "/" in compatible or "\\" in compatible or not _SEPARATOR_LOOKALIKES.isdisjoint(name):
        raise InvalidFilename("filename must not contain a path separator (or a look-alike)")
    if extension_skeleton(name).strip(".") == "":
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
    """Every dangerous extension in ``name``, including inner ones ("a.php.jpg"), as
    written or as its look-alike dots and compatibility forms would make it read."""
    found: list[str] = []
    for form in (name, extension_skeleton(name)):
        # parts[0] is the stem; for a hidden file (".htaccess") it is empty and the name
        # itself is the extension.
        for part in form.lower().split(".")[1:]:
            extension = part.strip()
            if extension in DANGEROUS_EXTENSIONS and extension not in found:
                found.append(extension)
    return found


def extension_skeleton(name: str) -> str:
    """``name`` as NFKC spells it, with characters drawn like a dot made dots: what a
    reader (or a tool that normalizes) takes for its extensions."""
    return unicodedata.normalize("NFKC", name).translate(_DOT_LOOKALIKES)


def format_characters(name: str) -> list[str]:
    """The distinct format characters (category Cf) in ``name``, each written as "U+"
    and its hex code point, at most ``_NAMED_CHARACTERS`` of them."""
    found = dict.fromkeys(
        f"U+{ord(char):04X}" for char in name if unicodedata.category(char) == "Cf"
    )
    return list(found)[:_NAMED_CHARACTERS]


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
    """(reason, detail) when detected bytes break policy, else None.

    A declared type the content contradicts is named first (an ELF binary sent as
    image/png is a ``mime-mismatch``): it is what the client got wrong. Content that
    declared nothing (``application/octet-stream``) or its own type meets the type lists.
    """
    declared = normalize_mime(declared)
    detected = normalize_mime(detected)
    if not types_agree(declared, detected):
        return "mime-mismatch", f"declared {declared} but the content is {detected}"
    if detected in settings.denied_mime_types:
        return "disallowed-type", f"content is {detected}, which is not accepted"
    if settings.allowed_mime_types and not _allowed(detected, settings.allowed_mime_types):
        return "disallowed-type", f"content is {detected}, which is not in the allowed types"
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
