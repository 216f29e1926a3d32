from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.config import load_config
from registry.errors import ConfigError


def write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "featurestore.yaml").write_text(text)
    return root


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "project: p\n"), environ={})
    assert cfg.online_store.type == "embedded"
    assert cfg.registry_url == f"sqlite:///{(tmp_path / 'data/registry.db').resolve()}"
    assert cfg.offline_path == tmp_path.resolve() / "data/offline"


def test_precedence_argument_over_environment_over_file(tmp_path: Path) -> None:
    root = write(tmp_path, "project: p\nonline_store: {type: embedded, url: redis://file}\n")
    env = {"FEATURESTORE__ONLINE_STORE__TYPE": "redis", "FEATURESTORE__ONLINE_STORE__URL": "redis://env"}
    cfg = load_config(root, environ=env)
    assert (cfg.online_store.type, cfg.online_store.url) == ("redis", "redis://env")
    cfg = load_config(root, {"online_store": {"url": "redis://arg"}}, environ=env)
    assert cfg.online_store.url == "redis://arg"


def test_found_from_a_subdirectory(tmp_path: Path) -> None:
    write(tmp_path, "project: p\n")
    (tmp_path / "features" / "deep").mkdir(parents=True)
    assert load_config(tmp_path / "features" / "deep", environ={}).root == tmp_path.resolve()


def test_bad_value_names_every_place_looked(tmp_path: Path) -> None:
    root = write(tmp_path, "project: p\nonline_store:\n  type: cassandra\n")
    with pytest.raises(ConfigError) as info:
        load_config(root, environ={})
    message = str(info.value)
    assert "online_store.type" in message
    assert "FEATURESTORE__ONLINE_STORE__TYPE" in message
    assert "featurestore.yaml:3" in message


def test_missing_config_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="featurestore init"):
        load_config(tmp_path, environ={})


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="registy"):
        load_config(write(tmp_path, "project: p\nregisty: x\n"), environ={})


def test_tokens_from_environment_as_json(tmp_path: Path) -> None:
    root = write(tmp_path, "project: p\n")
    digest = "a" * 64
    cfg = load_config(root, environ={"FEATURESTORE__SERVER__TOKENS": f'[{{"name": "s", "sha256": "{digest}", "roles": ["read"]}}]'})
    assert cfg.server.tokens[0].roles == ["read"]
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(root, environ={"FEATURESTORE__SERVER__TOKENS": "[oops"})
    with pytest.raises(ConfigError, match="server.tokens"):
        load_config(root, environ={"FEATURESTORE__SERVER__TOKENS": '[{"name": "s", "sha256": "short", "roles": ["read"]}]'})
