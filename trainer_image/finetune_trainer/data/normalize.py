"""Unicode and whitespace normalisation, and the content key used for dedup and splits.

Stored text gets only changes that never alter meaning: NFC composition, CRLF to LF,
invisible format characters removed, trailing spaces trimmed, runs of blank lines
shortened. Indentation is kept (code depends on it). The content *key* goes further
(NFKC, case folding, all whitespace collapsed) so that trivially different copies hash
the same; it is only ever hashed, never written out.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Zero-width and BOM characters that sneak in from copy-paste and web scrapes; ZWJ is kept
# because emoji sequences and some scripts need it.
_INVISIBLE = re.compile("[\u200b\u200c\u2060\ufeff\u00ad]")
# C0/C1 control characters other than tab and newline.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The text with safe Unicode and whitespace normalisation applied."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub("", text)
    text = text.replace("\u00a0", " ")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


def content_key(text: str) -> str:
    """Aggressively normalised text for equality checks (never stored)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _ANY_SPACE.sub(" ", text).strip()


def content_hash(text: str) -> bytes:
    """A fixed-size (16-byte) digest of the content key: what dedup and leakage keep per record."""
    return hashlib.blake2b(content_key(text).encode("utf-8"), digest_size=16).digest()
