"""The runnable examples of docs/clients.md, pointed at a test's Redis port and token."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"


def doc_example(marker: str) -> str:
    """The fenced code block right after ``<!-- run: marker -->`` in docs/clients.md."""
    text = (ROOT / "docs" / "clients.md").read_text()
    found = re.search(rf"<!-- run: {re.escape(marker)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"docs/clients.md has no block marked 'run: {marker}'"
    return found.group(1)


def localised(code: str, port: int, token: str) -> str:
    """A docs example pointed at the test's Redis port and token instead of the documented ones."""
    assert "6379" in code and DOC_TOKEN in code
    return re.sub(r"\b6379\b", str(port), code).replace(DOC_TOKEN, token)
