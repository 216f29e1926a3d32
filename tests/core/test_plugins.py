"""The one importer of backend classes (featurestore.plugins), used by the online store factory
and the stream backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.online.base import OnlineStore
from featurestore.online.memory import MemoryOnlineStore
from featurestore.plugins import load_class
from featurestore.streams import base as streams
from featurestore.streams.base import StreamReader
from registry.errors import ConfigError

HINT = "fix the BACKENDS map"


def load(spec: str, base: type = OnlineStore) -> type:
    return load_class(spec, base, what="online store backend", hint=HINT)


def test_a_good_spec_gives_the_class() -> None:
    assert load("featurestore.online.memory:MemoryOnlineStore") is MemoryOnlineStore


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("featurestore.online.memory.MemoryOnlineStore", "is not of the form 'package.module:Class'"),
        (":MemoryOnlineStore", "is not of the form"),
        ("featurestore.online.memory:", "is not of the form"),
        ("featurestore.online.nowhere:Store", "there is no module 'featurestore.online.nowhere'"),
        ("nowhere_at_all.sub:Store", "there is no module 'nowhere_at_all.sub'"),
        ("featurestore.online.memory:NoSuchStore", "is not an OnlineStore subclass"),
    ],
)
def test_a_bad_spec_is_a_config_error_with_the_hint(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(spec)
    assert caught.value.hint == HINT and spec in caught.value.message


def test_a_class_of_the_wrong_base_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'pathlib:Path' is not an OnlineStore subclass"):
        load("pathlib:Path")
    with pytest.raises(ConfigError, match="is not a StreamReader subclass"):
        load("featurestore.online.memory:MemoryOnlineStore", StreamReader)
    with pytest.raises(ConfigError, match="is not an OnlineStore subclass"):
        load("featurestore.plugins:load_class")  # not a class at all


def test_an_import_error_inside_the_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backend whose client library is missing says which library, not "no such backend".
    (tmp_path / "broken_backend.py").write_text("import a_client_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_client_that_is_not_installed"):
        load("broken_backend:Store")


def test_stream_backends_go_through_the_same_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(streams.BACKENDS, "redis_stream", ("pathlib:Path", "pathlib:Path"))
    with pytest.raises(ConfigError, match="stream backend 'pathlib:Path' is not a StreamReader"):
        streams._load("redis_stream", 0, StreamReader)
    with pytest.raises(ConfigError, match="unknown stream source type 'kafka'"):
        streams._load("kafka", 0, StreamReader)
