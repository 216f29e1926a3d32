"""Every document the CLI points at exists: in `--help` of every verb and sub-verb, and in any
message (error hints included) written in featurestore/cli/*.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featurestore.cli.docgen import cli_reference
from featurestore.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
# A repository path ending in .md, or anything under docs/ (trailing punctuation dropped).
DOC_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md|docs/[\w./-]*[\w/])")
URL = re.compile(r"https?://[^\s`'\")\]]+")
LOCAL = re.compile(r"https?://(127\.0\.0\.1|localhost|\{host\})[:/{]")
# External URLs cannot be fetched here: whoever adds one to a help text checks it and lists it.
CHECKED_URLS: frozenset[str] = frozenset()


def references(text: str) -> tuple[set[str], set[str]]:
    paths = set(DOC_PATH.findall(text))
    urls = {u.rstrip(".,;:") for u in URL.findall(text) if not LOCAL.match(u)}
    return paths, urls


def test_the_patterns_find_what_they_should() -> None:
    paths, urls = references(
        "See docs/materialization.md. Docs: docs/reference/cli.md and README.md; "
        "API docs at /docs, http://127.0.0.1:8080/docs and https://example.org/x."
    )
    assert paths == {"docs/materialization.md", "docs/reference/cli.md", "README.md"}
    assert urls == {"https://example.org/x"}


def test_every_help_text_points_at_documents_that_exist() -> None:
    text = cli_reference()  # --help of featurestore, every verb and every sub-verb
    paths, urls = references(text)
    assert "docs/reference/cli.md" in paths  # the top-level help names the reference
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == [], f"--help names documents that do not exist: {missing}"
    assert urls <= CHECKED_URLS, f"unchecked URLs in --help: {sorted(urls - CHECKED_URLS)}"


def test_every_message_of_the_cli_points_at_documents_that_exist() -> None:
    for source in sorted((ROOT / "featurestore" / "cli").glob("*.py")):
        if source.name == "docgen.py":
            continue  # it writes the pages of docs/reference (named there without the folder)
        paths, urls = references(source.read_text())
        missing = sorted(p for p in paths if not (ROOT / p).exists())
        assert missing == [], f"{source.name} names documents that do not exist: {missing}"
        assert urls <= CHECKED_URLS, f"{source.name}: unchecked URLs {sorted(urls - CHECKED_URLS)}"


def test_featurestore_help_names_the_cli_reference(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "Docs: docs/reference/cli.md" in capsys.readouterr().out
