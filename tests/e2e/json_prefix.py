"""What the JSON-constrained tests accept of a choice cut by `max_tokens`."""

from __future__ import annotations

import json


def is_prefix_of_json(text: str) -> bool:
    """Whether some continuation makes `text` valid JSON: json.loads fails only at its end."""
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError as e:
        return e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
