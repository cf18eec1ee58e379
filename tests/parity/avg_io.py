"""Small I/O helpers shared by the AVG reference scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

# A JSON array holding only numbers (and whitespace), as written by json.dumps(indent=...).
_FLAT_ARRAY = re.compile(r"\[\s*(-?[0-9][^\[\]{}\"]*?)\s*\]", re.S)


def dumps(value) -> str:
    """Indented JSON with flat number lists kept on one line, so fixtures diff well."""
    text = json.dumps(value, indent=1)
    return _FLAT_ARRAY.sub(lambda m: "[" + re.sub(r"\s*,\s*", ", ", m.group(1).strip()) + "]", text) + "\n"


def write_json(path: Path, value) -> None:
    Path(path).write_text(dumps(value))
