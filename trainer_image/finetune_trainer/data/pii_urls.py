"""Web addresses (HIPAA Safe Harbor's identifier 14): a Presidio recognizer that never fetches.

Presidio's own URL recognizer accepts any word ending in one of its TLDs, so "setup.py" and
"notes.md" become URLs. Ours checks the host against the Public Suffix List with
tldextract, using the copy bundled with tldextract and never the live list: by default
tldextract downloads it from publicsuffix.org at first use, which would be a request
leaving the building from every worker.

Three shapes: with a scheme (https://, ftp://: always an address, intranet hosts
included), starting www., and a bare host ("portal.example.org/p/7") whose suffix is
public and not a file extension.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

from presidio_analyzer import Pattern, PatternRecognizer

# A URL ends before spaces, quotes and brackets, and not on the sentence's punctuation.
_TAIL = r"""(?:[^\s<>"'`\[\]{}|\\^]*[^\s<>"'`\[\]{}|\\^.,;:!?)])?"""
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
WITH_SCHEME = rf"\b(?:https?|ftps?|sftp)://{_LABEL}" + _TAIL
WITH_WWW = rf"(?<![\w@.-])www\d{{0,3}}\.{_LABEL}" + _TAIL
# Not after "@" (an e-mail's domain) nor inside a longer word or path segment.
BARE_HOST = (
    rf"(?<![\w@.:/-])(?:{_LABEL}\.)+[A-Za-z]{{2,24}}(?::\d{{2,5}})?(?:/" + _TAIL + r")?(?![\w@-])"
)
_SCHEME = re.compile(r"^[a-z]+://", re.IGNORECASE)
# File names whose extension is also a public suffix ("setup.py", "notes.md", "data.zip"):
# a bare host with one of these is a file, not a site. With a scheme or www. it is a site.
FILE_EXTENSIONS = frozenset(
    "ac am bz cc hs in java md mk ml mov pl pm ps py rs sh so zip".split()  # noqa: SIM905
)


@lru_cache(maxsize=1)
def suffix_extractor() -> Any:
    """tldextract on its bundled Public Suffix List: no URLs to fetch, no cache to write."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def host_of(url: str) -> str:
    """The host part: no scheme, user, port, path, query or fragment."""
    rest = _SCHEME.sub("", url)
    rest = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return rest.rpartition("@")[2].partition(":")[0]


def is_web_address(candidate: str) -> bool:
    """True for an address a browser would open, False for a file name or a typo'd sentence."""
    if _SCHEME.match(candidate):
        return True
    host = host_of(candidate)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return False  # a bare IP is the ip_address kind's
    parts = suffix_extractor()(host)
    if not parts.suffix or not (parts.domain or "." in parts.suffix):
        return False
    if candidate.lower().startswith("www"):
        return True
    # "end.It" is two sentences run together; a bare host's suffix is written lowercase.
    return parts.suffix == parts.suffix.lower() and (
        parts.suffix not in FILE_EXTENSIONS or "/" in candidate
    )


class WebAddressRecognizer(PatternRecognizer):
    """URLs with a scheme, www. or a public suffix, checked offline (see module docstring)."""

    def __init__(self, *, certain: float, likely: float) -> None:
        super().__init__(
            supported_entity="url",
            name="finetune_url",
            patterns=[
                Pattern("url_scheme", WITH_SCHEME, certain),
                Pattern("url_www", WITH_WWW, certain),
                Pattern("url_bare_host", BARE_HOST, likely),
            ],
            context=["url", "website", "link", "site", "page"],
            global_regex_flags=re.DOTALL | re.MULTILINE,
        )

    def invalidate_result(self, pattern_text: str) -> bool:
        # invalidate, not validate: a valid result keeps its pattern's score (validate
        # would raise every one to 1.0, above a strict scoreThreshold's reach).
        return not is_web_address(pattern_text)
