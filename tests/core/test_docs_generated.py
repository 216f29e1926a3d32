"""The generated reference pages (YAML, CLI, HTTP) must match the code they describe."""

from __future__ import annotations

from featurestore.cli.docgen import DOCS, generate


def test_reference_pages_are_up_to_date() -> None:
    stale = [name for name, text in generate().items() if not (DOCS / name).exists() or (DOCS / name).read_text() != text]
    assert stale == [], f"regenerate with `python3 -m featurestore.cli.docgen`: {stale}"
