"""`featurestore eval ...` and `GET /eval...`: the same answers as the SDK, in their formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.cli import main as cli
from featurestore.config import TokenConfig
from featurestore.evaluation import compare_versions, drift_vs_validation, evaluate
from featurestore.tokens import hash_token
from online_server import create_app, eval_http

ADMIN, READER = "fs_admin_token", "fs_reader_token"


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, logged: FeatureStore, capsys: pytest.CaptureFixture[str]):
    # Registered here as main.py will register it (see the report's diff).
    monkeypatch.setitem(cli.VERBS, "eval", ("featurestore.cli.eval_cmd", "query the evaluation store"))
    config = logged.config.online_store.model_dump()
    import featurestore.store as store_module

    real = store_module.FeatureStore
    monkeypatch.setattr(store_module, "FeatureStore", lambda repo: real(repo, config_overrides={"online_store": config}))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["-r", str(logged.repo_path), "eval", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_query_table_csv_json(run_cli, logged: FeatureStore) -> None:
    expected = evaluate(logged, models=["taste"], window="7d").to_pylist()
    code, out, _ = run_cli("query", "--model", "taste", "--window", "7d")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("window ") and lines[1].split()[:4] == ["model", "version", "slice", "count"]
    assert lines[2].split()[:4] == ["taste", "2", "all", "60"]
    assert f"{expected[0]['rmse']:.4f}" in lines[2]

    code, out, _ = run_cli("query", "-m", "taste", "--format", "csv", "--slice", "all,users", "--metric", "rmse")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["slice"] for r in rows] == ["all", "users=known", "users=new"]
    assert float(rows[0]["rmse"]) == pytest.approx(expected[0]["rmse"])
    assert list(rows[0]) == ["model", "version", "slice", "count", "rmse", "rmse_average_user"]

    code, out, _ = run_cli("query", "-m", "taste", "--format", "json", "--every", "1d", "--window", "30d")
    body = json.loads(out)
    assert code == 0 and sum(r["count"] for r in body["rows"] if r["slice"] == "all") == 100
    assert all("T" in r["bucket"] for r in body["rows"])


def test_cli_questions(run_cli, logged: FeatureStore) -> None:
    code, out, _ = run_cli("validation", "--format", "json")
    rows = json.loads(out)["rows"]
    assert code == 0 and rows == json.loads(json.dumps(drift_vs_validation(logged, window="7d").to_pylist()))
    code, out, _ = run_cli("compare", "taste", "1", "2", "--metric", "rmse", "--format", "json")
    assert code == 0
    assert json.loads(out)["rows"] == compare_versions(logged, "taste", 1, 2, window="7d", metrics=["rmse"]).to_pylist()
    code, out, _ = run_cli("drift", "taste", "--window", "30d", "--reference", "30d")
    assert code == 0 and out.splitlines()[0] == "weighted drift: no vectors to compare"  # nothing predicted yet
    assert out.splitlines()[1].split() == ["feature", "distance", "weight", "weighted", "mean_reference", "mean_window"]


def test_cli_errors_are_one_line_and_a_hint(run_cli) -> None:
    code, out, err = run_cli("query", "--metric", "rsme")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "error: unknown metric 'rsme'",
        "hint: use any of count, mean_label, mean_prediction, mse, rmse, mae, log_loss, auc, training_loss, validation_loss",
    ]
    code, _, err = run_cli("query", "--window", "yesterday")
    assert code == 1 and err.startswith("error: bad window 'yesterday'") and "hint: use a duration" in err
    code, _, err = run_cli("compare", "tast", "1", "2")
    assert code == 1 and "did you mean 'taste'" in err


def test_every_option_is_documented_in_help() -> None:
    import argparse

    from featurestore.cli import eval_cmd

    parser = argparse.ArgumentParser(prog="featurestore eval")
    eval_cmd.add_arguments(parser, "eval")
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(actions.choices) == {"query", "validation", "compare", "drift"}
    for name, sub in actions.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)


@pytest.fixture
def http(logged: FeatureStore):
    tokens = [TokenConfig(name="admin", sha256=hash_token(ADMIN), roles=["admin"]),
              TokenConfig(name="reader", sha256=hash_token(READER), roles=["read"])]
    server = logged.config.server.model_copy(update={"tokens": tokens})
    logged.config = logged.config.model_copy(update={"server": server})
    app = create_app(logged)
    app.include_router(eval_http.router(logged))  # as app.py will (see the report's diff)
    with TestClient(app) as client:
        yield client


def test_http_answers_what_the_sdk_answers(http: TestClient, logged: FeatureStore) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = http.get("/eval", params={"model": "taste", "window": "7d", "slice": ["all", "users"]}, headers=auth)
    assert r.status_code == 200, r.text
    expected = evaluate(logged, models=["taste"], slices=["all", "users"], window="7d").to_pylist()
    assert r.json()["rows"] == [
        {k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()} for row in expected
    ]
    r = http.get("/eval/validation", params={"window": "7d"}, headers=auth)
    assert r.status_code == 200 and {row["model"] for row in r.json()["rows"]} == {"taste", "ctx"}
    r = http.get("/eval/compare", params={"model": "taste", "a": 1, "b": 2, "metric": "rmse"}, headers=auth)
    assert r.status_code == 200 and r.json()["rows"][0]["slice"] == "all"
    r = http.get("/eval/drift", params={"model": "taste", "window": "1h"}, headers=auth)
    assert r.status_code == 200 and r.json()["version"] == 2 and len(r.json()["rows"]) == 5


def test_http_is_admin_only_and_errors_are_json(http: TestClient) -> None:
    assert http.get("/eval").status_code == 401
    r = http.get("/eval", headers={"Authorization": f"Bearer {READER}"})
    assert r.status_code == 403 and "`admin` role" in r.json()["error"]["message"]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = http.get("/eval", params={"metric": "rsme"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["message"] == "unknown metric 'rsme'"
    r = http.get("/eval", params={"model": "tast"}, headers=auth)
    assert r.status_code == 404 and "did you mean 'taste'" in r.json()["error"]["message"]
    # Parameters are parsed by the route: a bad or missing one is a 400 naming it, never a 422.
    r = http.get("/eval/compare", params={"model": "taste", "a": "0", "b": "2"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("bad `a` '0'")
    r = http.get("/eval/compare", params={"a": "1", "b": "2"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["message"] == "the query parameter `model` is required"
    r = http.get("/eval/drift", params={"model": "taste", "version": "²"}, headers=auth)
    assert r.status_code == 400 and "bad `version`" in r.json()["error"]["message"]
