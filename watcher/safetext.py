"""Text that came from outside (file names, column names, error messages) made safe to show.

A file name may hold any byte but ``/`` and NUL: newlines that forge log lines, terminal
escapes, bytes that are not UTF-8 (Python hands them over as lone surrogates, which SQLite
and e-mail refuse). Everything such text reaches (the log, the ledger, reason files, mails,
Airflow's conf) gets it through `escape`, and a batch id through `safe_id`.
"""

from __future__ import annotations

import hashlib
import os
import re

# C0 and C1 controls, DEL, the Unicode line/paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str, limit: int | None = None) -> str:
    """`text` with control characters and undecodable bytes as visible escapes, cut to
    `limit` characters (with an ellipsis) when given."""
    out = _UNSAFE.sub(_escaped, text)
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)] + "…"
    return out


def is_clean(text: str) -> bool:
    return _UNSAFE.search(text) is None


def safe_id(name: str) -> str:
    """A printable, UTF-8-encodable id for a file name, unique per name.

    A clean name is its own id; any other gets its escaped form plus a short hash of the
    raw bytes, so two names that escape alike (``a\\nb`` and ``a<newline>b``) stay apart.
    """
    if is_clean(name):
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    return f"{escape(name)}~{digest}"


def cut_bytes(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes`."""
    raw = text.encode("utf-8", "surrogateescape")[:max_bytes]
    return raw.decode("utf-8", "ignore")


def sample_names(names: list[object], count: int = 10, each: int = 40) -> str:
    """A short, escaped, truncated list of column names for a message: never the file's
    content beyond that (a "column" of a file that is not a table is its first line)."""
    shown = [escape(str(n), each) for n in names[:count]]
    more = f", … {len(names) - count} more" if len(names) > count else ""
    return ", ".join(shown) + more
