"""`init --force` over a repository leaves only the new template's definitions (review nit 1):
the previous definition files are moved into ``.featurestore-backup/``, byte for byte, and `init`
says where; nothing is deleted, and files that are not definitions stay where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.cli.init_cmd import BACKUP_DIR, BLANK_DEFINITIONS
from featurestore.cli.main import main

MINE = "entities:\n  - {name: shop, join_keys: [{name: shop_id, dtype: int64}]}\n"


def definitions(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "features").rglob("*")) if p.is_file()}


def test_force_blank_over_the_example_is_blank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    assert main(["init", str(root)]) == 0  # the example
    (root / "features" / "team").mkdir()
    (root / "features" / "team" / "mine.yaml").write_text(MINE)  # written by a user
    (root / "features" / "README.md").write_text("notes")  # not a definition
    before = definitions(root)
    capsys.readouterr()

    assert main(["init", str(root), "--template", "blank", "--force"]) == 0
    out = capsys.readouterr().out
    [backup] = (root / BACKUP_DIR).iterdir()
    assert f"Moved 5 definition file(s) of the previous repository to {BACKUP_DIR}/{backup.name}/" in out
    assert definitions(root) == {
        "features/README.md": b"notes",
        "features/definitions.yaml": BLANK_DEFINITIONS.encode(),
    }
    saved = {str(p.relative_to(backup)): p.read_bytes() for p in sorted(backup.rglob("*")) if p.is_file()}
    assert saved == {k: v for k, v in before.items() if k.endswith(".yaml")}
    assert main(["-r", str(root), "validate"]) == 0
    assert "OK: 0 entities, 0 sources, 0 feature views" in capsys.readouterr().out


def test_force_keeps_an_edited_definitions_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The blank template writes features/definitions.yaml: a user's file of that name is moved
    aside, not overwritten; a second `init --force` gets a backup directory of its own."""
    root = tmp_path / "repo"
    assert main(["init", str(root), "--template", "blank"]) == 0
    (root / "features" / "definitions.yaml").write_text(MINE)
    assert main(["init", str(root), "--template", "blank", "--force"]) == 0
    assert main(["init", str(root), "--template", "blank", "--force"]) == 0
    first, second = sorted((root / BACKUP_DIR).iterdir())
    assert (first / "features" / "definitions.yaml").read_text() == MINE
    assert (second / "features" / "definitions.yaml").read_text() == BLANK_DEFINITIONS
    assert (root / "features" / "definitions.yaml").read_text() == BLANK_DEFINITIONS
    capsys.readouterr()
    assert main(["-r", str(root), "validate"]) == 0  # the backups are hidden from the loader


def test_nothing_to_move_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert main(["init", str(tmp_path), "--template", "blank", "--force"]) == 0
    assert "Moved" not in capsys.readouterr().out
    assert not (tmp_path / BACKUP_DIR).exists() and (tmp_path / "keep.txt").read_text() == "x"
