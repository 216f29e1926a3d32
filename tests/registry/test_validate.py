"""Validation reports every problem of a run, each with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import DefinitionError
from registry.validate import load_definitions
from tests.registry.helpers import BASE, write_repo

FIVE_MISTAKES = {
    "a.yaml": """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: events
    type: parquet
    path: data/events.parquet
    timestamp_field: ts
feature_views:
  - name: user_stats
    entities: [usr]
    source: events
    ttl: 3 days
    features:
      - {name: clicks, dtype: int65}
      - {name: score, dtype: float32, colour: red}
""",
    "b.yaml": """\
entities:
  - name: user
    join_keys: [{name: user_id}]
""",
}


def issues_of(root: Path) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        load_definitions(root, ["features"])
    return [str(i) for i in info.value.issues]


def test_five_mistakes_are_reported_together_with_file_line_and_key(tmp_path: Path) -> None:
    write_repo(tmp_path, FIVE_MISTAKES)
    issues = issues_of(tmp_path)
    assert len(issues) == 5, issues
    expected = [
        ("features/a.yaml:11: feature_views.user_stats.entities", "unknown entity 'usr'"),
        ("features/a.yaml:13: feature_views.user_stats.ttl", "expected a duration such as"),
        ("features/a.yaml:15: feature_views.user_stats.features.clicks.dtype", "unknown dtype 'int65'"),
        ("features/a.yaml:16: feature_views.user_stats.features.score.colour", "unknown key"),
        ("features/b.yaml:2: entities.user", "duplicate entity name; first declared at features/a.yaml:2"),
    ]
    for (prefix, text), issue in zip(sorted(expected), sorted(issues)):
        assert issue.startswith(prefix), issue
        assert text in issue


def test_valid_repository_loads(tmp_path: Path) -> None:
    write_repo(tmp_path, {"defs.yaml": BASE})
    defs = load_definitions(tmp_path, ["features"])
    assert list(defs.feature_views) == ["user_stats"]
    assert defs.feature_views["user_stats"].ttl_seconds == 86400
    assert [str(r) for r in defs.resolve_features("svc")] == ["user_stats:clicks", "user_stats:score"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("entities: [\n  - name: x\n", 2, "invalid YAML"),
        ("entities:\n  - name: Bad-Name\n    join_keys: [{name: k}]\n", 2, "bad name 'Bad-Name'"),
        ("entities:\n  - name: event_timestamp\n    join_keys: [{name: k}]\n", 2, "is reserved"),
        ("sources:\n  - name: s\n    type: kafka\n    timestamp_field: ts\n", 3, "unknown `type`"),
        ("sources:\n  - name: s\n    type: postgres\n    timestamp_field: ts\n", 2, "exactly one of `table` or `query`"),
        ("feature_servics: []\n", 1, "unknown key"),
        ("- just\n- a list\n", 1, "expected a mapping"),
    ],
)
def test_single_mistakes_name_line_and_what_is_accepted(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    write_repo(tmp_path, {"x.yaml": text})
    (issue,) = issues_of(tmp_path)
    assert issue.startswith(f"features/x.yaml:{line}:"), issue
    assert needle in issue


def test_feature_named_like_a_join_key_is_rejected(tmp_path: Path) -> None:
    write_repo(tmp_path, {"x.yaml": BASE.replace("{name: clicks, dtype: int64}", "{name: user_id, dtype: int64}")})
    (issue,) = issues_of(tmp_path)
    assert "share its name with a join key" in issue


def test_unknown_feature_reference_suggests_the_nearest(tmp_path: Path) -> None:
    write_repo(tmp_path, {"x.yaml": BASE.replace("features: [user_stats]", "features: [user_stats:clickz]")})
    (issue,) = issues_of(tmp_path)
    assert "did you mean 'user_stats:clicks'" in issue


def test_no_definition_files_is_an_error(tmp_path: Path) -> None:
    (issue,) = issues_of(tmp_path)
    assert "no .yaml definition files" in issue


def test_definitions_split_over_files_and_hidden_dirs_ignored(tmp_path: Path) -> None:
    head, _, rest = BASE.partition("feature_views:")
    write_repo(tmp_path, {"entities.yaml": head, "views.yaml": "feature_views:" + rest})
    hidden = tmp_path / "features" / ".hidden"
    hidden.mkdir()
    (hidden / "junk.yaml").write_text("not: [valid")
    defs = load_definitions(tmp_path, ["features"])
    assert set(defs.entities) == {"user"} and set(defs.feature_views) == {"user_stats"}


AGGREGATION_MISTAKES = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - {name: clicks, type: parquet, path: data/c.parquet, timestamp_field: ts}
feature_views:
  - name: user_clicks
    entities: [user]
    source: clicks
    features:
      - name: n_1h
        dtype: float32
        aggregation: {function: count, window: 1h}
      - name: spend
        dtype: float64
        aggregation: {function: sum, column: ts, window: 90m, slide: 1h}
      - name: plain
        dtype: float64
      - name: avg_label
        dtype: float64
        aggregation: {function: mean, column: label, window: 2h, slide: 30m}
      - name: last_label
        dtype: string
        aggregation: {function: last, column: label, window: 1h}
"""


def test_aggregation_rules_are_checked_by_validate_with_file_and_line(tmp_path: Path) -> None:
    """The same rules the jobs apply (registry/aggregations.py), reported before any job runs."""
    write_repo(tmp_path, {"x.yaml": AGGREGATION_MISTAKES})
    issues = issues_of(tmp_path)
    expected = [
        ("features/x.yaml:10: feature_views.user_clicks.features:", "plain have no aggregation"),
        ("features/x.yaml:10: feature_views.user_clicks.features:", "slide by different steps"),
        ("features/x.yaml:13: feature_views.user_clicks.features.n_1h.aggregation:", "not float32"),
        ("features/x.yaml:16: feature_views.user_clicks.features.spend.aggregation:", "not a multiple of the slide"),
        ("features/x.yaml:16: feature_views.user_clicks.features.spend.aggregation:", "'ts' is a join key or timestamp"),
        ("features/x.yaml:21: feature_views.user_clicks.features.avg_label.aggregation:", "mean needs a numeric column; 'label' is string"),
    ]
    assert len(issues) == len(expected), issues
    for prefix, text in expected:
        assert any(i.startswith(prefix) and text in i for i in issues), (prefix, text, issues)


def test_a_valid_aggregated_view_passes_validate(tmp_path: Path) -> None:
    fixed = (
        AGGREGATION_MISTAKES.replace("dtype: float32\n", "dtype: int64\n")
        .replace("column: ts, window: 90m", "column: amount, window: 2h")
        .replace("      - name: plain\n        dtype: float64\n", "")
        .replace("column: label, window: 2h, slide: 30m", "column: amount, window: 2h, slide: 1h")
    )
    write_repo(tmp_path, {"x.yaml": fixed})
    defs = load_definitions(tmp_path, ["features"])
    assert [f.name for f in defs.feature_views["user_clicks"].features] == ["n_1h", "spend", "avg_label", "last_label"]
