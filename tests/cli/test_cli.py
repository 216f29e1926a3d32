"""The CLI as a user meets it: exit codes, one-line errors, --help everywhere, fast start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.cli.main import VERBS, main
from tests.registry.test_validate import FIVE_MISTAKES
from tests.registry.helpers import write_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    assert main(["init", str(root)]) == 0
    return root


def test_init_validate_apply_show(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-r", str(repo), "validate"]) == 0
    assert "3 feature views" in capsys.readouterr().out
    assert main(["-r", str(repo), "apply"]) == 0
    assert "Applied registry version 1" in capsys.readouterr().out
    assert main(["-r", str(repo), "plan"]) == 0
    assert "No changes" in capsys.readouterr().out
    assert main(["-r", str(repo), "registry", "versions"]) == 0
    assert "12 added" in capsys.readouterr().out
    assert main(["-r", str(repo), "registry", "show", "feature_view", "item_embedding"]) == 0
    assert json.loads(capsys.readouterr().out)["features"][0]["dtype"] == "float32[8]"


def test_five_mistakes_exit_1_and_apply_changes_nothing(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-r", str(repo), "apply"]) == 0
    capsys.readouterr()
    write_repo(repo, FIVE_MISTAKES)
    assert main(["-r", str(repo), "validate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 5 problems in the feature definitions:")
    lines = err.splitlines()
    assert sum(line.startswith("  features/a.yaml:") for line in lines) == 4
    assert sum(line.startswith("  features/b.yaml:") for line in lines) == 1
    assert "Traceback" not in err
    assert main(["-r", str(repo), "apply"]) == 1
    capsys.readouterr()
    assert main(["-r", str(repo), "registry", "versions"]) == 0
    out = capsys.readouterr().out
    assert "      1  " in out and "      2  " not in out


def test_user_error_is_one_line_with_hint_and_traceback_only_with_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-r", str(tmp_path), "plan"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("error: no featurestore.yaml found")
    assert err.splitlines()[1].startswith("hint: ")
    assert main(["-r", str(tmp_path), "--debug", "plan"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_breaking_change_needs_allow_breaking(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-r", str(repo), "apply"]) == 0
    views = repo / "features" / "views.yaml"
    views.write_text(views.read_text().replace("{name: ratings_1d, dtype: int64, description: Ratings given", "{name: ratings_1d, dtype: float64, description: Ratings given"))
    capsys.readouterr()
    assert main(["-r", str(repo), "apply"]) == 1
    assert "--allow-breaking" in capsys.readouterr().err
    assert main(["-r", str(repo), "apply", "--allow-breaking", "-m", "retype"]) == 0
    assert "Applied registry version 2" in capsys.readouterr().out


def test_schema_is_json_schema_of_definition_files(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert set(schema["properties"]) == {"entities", "sources", "feature_views", "feature_services", "models", "feature_jobs"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert "usage: featurestore" in capsys.readouterr().out


def test_help_and_validate_do_not_import_heavy_libraries(repo: Path) -> None:
    code = (
        "import sys\n"
        "from featurestore.cli.main import main\n"
        f"main(['-r', {str(repo)!r}, 'validate'])\n"
        "heavy = [m for m in ('apache_beam', 'duckdb', 'sklearn', 'fastapi', 'pandas') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "heavy="


def test_console_script_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "featurestore.cli.main", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "materialize" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(tmp_path), "validate"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
