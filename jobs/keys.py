"""Record keys and the path-safe output names made from them."""

from __future__ import annotations

import re
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-+=,@~ ]")


def safe_relpath(key: str) -> str:
    """A relative path from a record key that can never leave its folder:
    folders are kept; empty, '.' and '..' components, absolute prefixes and
    drive letters cannot escape; other unsafe characters are %-escaped
    (reversible, so two keys never collide)."""
    parts = []
    for comp in key.replace("\\", "/").split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            comp = "%2E%2E"
        elif _UNSAFE.search(comp) or comp.startswith(" "):
            comp = quote(comp, safe="")
        parts.append(comp)
    return "/".join(parts) or "%00empty"
