"""`featurestore init` never replaces a repository without --force; `--template blank` is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.cli.init_cmd import BLANK_DEFINITIONS
from featurestore.cli.main import main


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("template", ["example", "blank"])
def test_init_over_a_repository_is_refused_and_writes_nothing(
    tmp_path: Path, template: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    assert main(["init", str(root), "--template", "blank", "--project", "mine"]) == 0
    (root / "features" / "mine.yaml").write_text("entities:\n  - {name: user, join_keys: [{name: user_id, dtype: int64}]}\n")
    before = snapshot(root)
    capsys.readouterr()

    assert main(["init", str(root), "--template", template]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"error: {root.resolve()} already holds a feature repository (featurestore.yaml)")
    assert err[1].startswith("hint: ") and "--force" in err[1]
    assert snapshot(root) == before


def test_force_overwrites_the_settings_and_keeps_other_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    assert main(["init", str(root), "--template", "blank", "--project", "old"]) == 0
    (root / "notes.txt").write_text("mine")
    assert main(["init", str(root), "--template", "blank", "--project", "new", "--force"]) == 0
    assert "project: new" in (root / "featurestore.yaml").read_text()
    assert (root / "notes.txt").read_text() == "mine"


def test_a_non_empty_directory_without_a_repository_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("x")
    for template in ("example", "blank"):
        assert main(["init", str(tmp_path), "--template", template]) == 1
        err = capsys.readouterr().err
        assert "exists and is not empty" in err and "--force" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_project_names_and_files_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "a"), "--project", "Bad Name"]) == 1
    assert "bad project name" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    assert main(["init", str(tmp_path / "file"), "--template", "blank"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_the_blank_template_is_an_empty_valid_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "fraud"
    assert main(["init", str(root), "--template", "blank", "--project", "fraud"]) == 0
    assert sorted(snapshot(root)) == [".gitignore", "features/definitions.yaml", "featurestore.yaml", "schema.json"]
    assert "project: fraud" in (root / "featurestore.yaml").read_text()
    capsys.readouterr()
    assert main(["-r", str(root), "validate"]) == 0
    assert "OK: 0 entities, 0 sources, 0 feature views" in capsys.readouterr().out
    for verb in ("plan", "apply", "plan"):
        assert main(["-r", str(root), verb]) == 0, capsys.readouterr().err
        assert "No changes" in capsys.readouterr().out


def test_the_blank_templates_commented_example_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Uncommented, the example in the blank definitions file validates and applies."""
    root = tmp_path / "repo"
    assert main(["init", str(root), "--template", "blank"]) == 0
    commented = BLANK_DEFINITIONS.split("For example:\n", 1)[1].splitlines()
    example = "\n".join(line.removeprefix("#").removeprefix(" ") for line in commented)
    assert "feature_views:" in example
    (root / "features" / "definitions.yaml").write_text(example + "\n")
    capsys.readouterr()
    assert main(["-r", str(root), "validate"]) == 0, capsys.readouterr().err
    assert "1 entities, 1 sources, 1 feature views" in capsys.readouterr().out
    assert main(["-r", str(root), "apply"]) == 0, capsys.readouterr().err
    assert "Applied registry version 1" in capsys.readouterr().out


def test_the_example_stays_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    assert main(["init", str(root)]) == 0
    assert "Created the example repository" in capsys.readouterr().out
    assert (root / "features" / "views.yaml").exists()
