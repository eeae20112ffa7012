"""Structured log events read back from captured output, whichever renderer is set up
(JSON lines in production, the console renderer in development)."""

from __future__ import annotations

import json
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FIELD = re.compile(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)")


def parse_events(text: str, name: str) -> list[dict]:
    """Every event called ``name`` in ``text``, as a dict of its fields (numbers as
    ints where they look like ints)."""
    found = []
    for line in _ANSI.sub("", text).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
            continue
        if not re.search(rf"\b{re.escape(name)}\b", line):
            continue
        event = {"event": name}
        for key, value in _FIELD.findall(line):
            value = value.strip("'\"")
            event[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
        found.append(event)
    return found
