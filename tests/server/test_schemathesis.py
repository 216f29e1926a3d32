"""A bounded schemathesis run over every operation of the online server's OpenAPI schema: on both
profiles (embedded: SQLite registry and embedded online store; Redis + PostgreSQL), with and
without ``server.tokens``, against a repository with trained models, so /predict, /feedback and
/models reach real code.

Every response must keep these rules (``problems``):

* **never a 5xx**: a bad request is the client's error, and the stores are up;
* **a 4xx is the documented error object** (docs/serving.md, ``online_server.http``): JSON
  ``{"error": {"type", "message", "hint", "retryable", "fields"?}}`` and nothing else;
* **a 422 names the field**: ``fields`` is a non-empty list, and each entry's ``field`` is a key of
  the request body (``user.user_id``, ``observations.3.label``) or ``(body)``. ``(body)`` is the
  name ``validation_response`` gives an error with no key to name: a body that is not JSON, not an
  object, or breaks a rule across keys ("exactly one of `features` or `feature_service`"). So the
  rule holds for every 422, without exceptions.

With tokens, generated cases carry a token with every role, and the same case sent without a
token must be a 401 with the error object on every route but /health and /metrics, which stay
open.

``test_mutations`` adds what random strings seldom reach: valid bodies with real names (a trained
model, a view, an item), each sent again with one value changed or dropped, or replaced whole by
a body that is not an object; there an error must name the changed key, not merely some key.

The app runs in-process (schemathesis's ASGI transport). ``BOUNDED`` caps the fuzzing phase at
30 examples per operation and derandomizes it; the examples and coverage phases are deterministic
already, so two runs send the same requests.

The tests at the end, ``test_defect_*``, pin server defects this run found; they fail until the
server is fixed (see each docstring).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from featurestore import FeatureStore
from featurestore.tokens import hash_token
from online_server import create_app
from online_server.app import build_openapi
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.velox.conftest import fake_export, fill, labels
from tests.velox_feedback.conftest import DEFS

settings.register_profile(
    "server-schemathesis",
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
BOUNDED = settings.get_profile("server-schemathesis")

# The schema without a repository: the routes create_app declares for any store.
OPENAPI = build_openapi()
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)

TOKEN = "fs_schemathesis_all_roles"
TOKENS = [{"name": "all", "sha256": hash_token(TOKEN), "roles": ["admin", "read", "write"]}]
OPEN_PATHS = frozenset({"/health", "/metrics"})
ENVELOPE_KEYS = frozenset({"type", "message", "hint", "retryable"})


# -- the repository -----------------------------------------------------------------------------


def stream_view(stream: str) -> str:
    """A view that takes pushed events. Only in the Redis + PostgreSQL profile: the embedded one
    needs no server running, and there /push finds no view with a stream (a 400)."""
    return (
        "  - name: user_clicks\n"
        "    entities: [user]\n"
        "    source: src\n"
        f"    stream_source: {{type: redis_stream, stream: {stream}, group: fs, url: '{REDIS_URL}'}}\n"
        "    features:\n"
        "      - {name: clicks, dtype: int64}\n"
    )


@dataclass(frozen=True)
class Repository:
    root: Path
    overrides: dict[str, Any]
    streams: bool


def build(root: Path, project: str, overrides: dict[str, Any], defs: str) -> None:
    """The models repository of tests/velox_feedback: taste trained twice (v2 active), ctx once."""
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(defs)
    (root / "featurestore.yaml").write_text(f"project: {project}\n")
    store = FeatureStore(root, config_overrides=overrides, registry_refresh_seconds=0)
    try:
        store.apply()
        fill(store)
        fake_export(store)
        store.train("taste", labels(seed=0))
        store.train("taste", labels(seed=1))
        store.train("ctx", labels(seed=2))
    finally:
        store.close()


@contextmanager
def embedded_repository(root: Path) -> Iterator[Repository]:
    overrides = {"online_store": {"type": "embedded"}}
    build(root, "t" + uuid.uuid4().hex[:12], overrides, DEFS)
    yield Repository(root, overrides, streams=False)


@contextmanager
def redis_pg_repository(root: Path) -> Iterator[Repository]:
    """Its own PostgreSQL schema and Redis project, dropped afterwards (as tests/conftest.py's
    per-test fixtures do)."""
    import redis
    import sqlalchemy as sa

    from tests.online.conftest import delete_redis_project

    project, schema = "t" + uuid.uuid4().hex[:12], "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - only when the service is down
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); start it with .ci/run")
    sep = "&" if "?" in POSTGRES_URL else "?"
    overrides = {
        "online_store": {"type": "redis", "url": REDIS_URL},
        "registry": f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}",
    }
    stream = f"{project}_clicks"
    try:
        build(root, project, overrides, DEFS.replace("models:\n", stream_view(stream) + "models:\n", 1))
        yield Repository(root, overrides, streams=True)
    finally:
        delete_redis_project(REDIS_URL, project)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.delete(stream)
        finally:
            client.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


PROFILES = {"embedded": embedded_repository, "redis_pg": redis_pg_repository}


@pytest.fixture(scope="module")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Repository]]:
    """A profile's repository, built on first use and shared by its two servers (one fixture
    parametrized over the four settings, so pytest builds each profile once, not once per
    switch between profiles)."""
    built: dict[str, Repository] = {}
    with ExitStack() as stack:

        def repository(profile: str) -> Repository:
            if profile not in built:
                root = tmp_path_factory.mktemp(profile) / "repo"
                built[profile] = stack.enter_context(PROFILES[profile](root))
            return built[profile]

        yield repository


# -- the server ---------------------------------------------------------------------------------


class WithoutLifespan:
    """The app as schemathesis's transport sees it. The transport starts an app's lifespan on first
    use and its pytest plugin ends it after every test item, which would run the server's shutdown
    hooks (flush the prediction log, stop the feedback thread) once per operation on a server
    that goes on serving. The fixture runs the one real lifespan instead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # Refused before any message: how an ASGI app says it has no lifespan.
            raise RuntimeError("the lifespan is run by the server fixture")
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class Server:
    app: WithoutLifespan
    client: TestClient  # sends the token, if any, with every request
    headers: dict[str, str]  # sent with every generated case
    tokens: bool
    streams: bool


integration = pytest.mark.integration
SETTINGS = [
    pytest.param("embedded-open"),
    pytest.param("embedded-tokens"),
    pytest.param("redis_pg-open", marks=integration),
    pytest.param("redis_pg-tokens", marks=integration),
]
WITHOUT_TOKENS = [p for p in SETTINGS if p.values[0].endswith("-open")]


@pytest.fixture(scope="module", params=SETTINGS)
def server(request: pytest.FixtureRequest, repositories: Callable[[str], Repository]) -> Iterator[Server]:
    profile, auth = request.param.split("-")
    repository = repositories(profile)
    tokens = auth == "tokens"
    overrides = {**repository.overrides, "server": {"tokens": TOKENS if tokens else []}}
    # Opened as app_from_environment opens it: a watcher thread polls the registry every second.
    store = FeatureStore(repository.root, config_overrides=overrides, registry_refresh_seconds=1.0)
    store.watcher.refresh(force=True)
    # An unknown prediction_id waits 0.1 s for another process's prediction log to catch up.
    # Generated ids are never known: the waits would be most of the run's time.
    store.feedback_service.prediction_wait_seconds = 0.0
    app = create_app(store, owns_store=True)
    headers = {"Authorization": f"Bearer {TOKEN}"} if tokens else {}
    with TestClient(app, headers=headers) as client:
        yield Server(WithoutLifespan(app), client, headers, tokens, repository.streams)


# -- the rules ----------------------------------------------------------------------------------


def body_keys(schema: dict[str, Any]) -> frozenset[str]:
    """The top-level keys a request body schema declares (through ``$ref``, and ``anyOf``: one
    observation or a batch)."""
    if "$ref" in schema:
        return body_keys(OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    keys = set(schema.get("properties", {}))
    for branch in schema.get("anyOf", []):
        keys |= body_keys(branch)
    return frozenset(keys)


#: (method, path template) -> the keys its body may have (none for operations without a body).
BODY_KEYS = {
    (method.upper(), path): body_keys(
        operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    )
    for path, methods in OPENAPI["paths"].items()
    for method, operation in methods.items()
}


def problems(status: int, content_type: str, body: bytes, keys: frozenset[str]) -> list[str]:
    """What breaks the rules of the module docstring in one response (empty: nothing). ``keys``:
    the top-level keys the request's body has or may have, one of which a 422 must name (or
    ``(body)``)."""
    if status >= 500:
        return [f"a {status}"]
    if status < 400:
        return []
    if not content_type.startswith("application/json"):
        return [f"a {status} of Content-Type {content_type!r}, not JSON"]
    try:
        data = json.loads(body)
    except ValueError:
        return [f"a {status} whose body is not JSON"]
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return [f'a {status} whose body is not {{"error": {{...}}}}']
    error = data["error"]
    found = []
    if not ENVELOPE_KEYS <= set(error) <= ENVELOPE_KEYS | {"fields"}:
        found.append(f"error keys {sorted(error)}: expected {sorted(ENVELOPE_KEYS)}, maybe fields")
    for key in ("type", "message"):
        if not (isinstance(error.get(key), str) and error[key]):
            found.append(f"no error {key}")
    if not (error.get("hint") is None or isinstance(error["hint"], str)):
        found.append("a hint that is neither text nor null")
    if not isinstance(error.get("retryable"), bool):
        found.append("retryable is not a boolean")
    fields = error.get("fields")
    if fields is None and status != 422:
        return found
    if not (isinstance(fields, list) and fields and all(isinstance(f, dict) for f in fields)):
        return [*found, f"a {status} whose fields are not a non-empty list of objects: {fields!r}"]
    for entry in fields:
        name = entry.get("field")
        if not (isinstance(name, str) and name):
            found.append(f"a field without a name: {entry!r}")
        elif name != "(body)" and not any(name == key or name.startswith(f"{key}.") for key in keys):
            found.append(f"field {name!r} is no key of the body ({', '.join(sorted(keys)) or 'none'})")
    return found


def check_response(case: schemathesis.Case, response: schemathesis.Response, note: str = "") -> None:
    content_type = (response.headers.get("content-type") or [""])[0]
    # An unknown key the client sent is named as sent (`Extra inputs are not permitted`).
    sent = case.body if isinstance(case.body, dict) else {}
    keys = BODY_KEYS[(case.operation.method.upper(), case.path)] | set(map(str, sent))
    found = problems(response.status_code, content_type, response.content, keys)
    assert not found, (
        f"{'; '.join(found)}{note}\n{case.as_curl_command()}\n"
        f"-> {response.status_code} {response.content[:2000]!r}"
    )


@SCHEMA.parametrize()
@BOUNDED
def test_every_operation(case: schemathesis.Case, server: Server) -> None:
    response = case.call(app=server.app, headers=server.headers)
    check_response(case, response)
    if server.tokens:
        anonymous = case.call(app=server.app)
        check_response(case, anonymous, " (without a token)")
        if case.path not in OPEN_PATHS:
            assert anonymous.status_code == 401, (case.as_curl_command(), anonymous.content)
            assert anonymous.headers.get("www-authenticate") == ["Bearer"]


# -- real names, one value changed --------------------------------------------------------------

#: What replaces one value of a valid body, as JSON text: NaN and Infinity are among them because
#: a client can send them and pydantic-core parses them.
ODD_VALUES = ("null", '""', '"\\u0000"', '"' + "x" * 300 + '"', str(2**63), "1e300", "-1", "1.5", "NaN",
              "-Infinity", "[]", "{}", "true")
#: What replaces a whole body: not UTF-8, not JSON, JSON but not an object, an empty object.
ODD_BODIES = (b"", b"\xff", b"{", b'{"a": 1,}', b"[]", b"null", b'"text"', b"{}")
DROPPED = object()

#: A valid body of each operation, with names the repository has. ``{id}`` becomes an id of the
#: case's own (a changed value with a reused feedback_id or push_id would be a 409), ``{view}``
#: the view that takes pushes where there is one.
VALID: dict[str, tuple[str, str, dict[str, Any]]] = {
    "features": ("/features", "/features", {
        "features": ["item_pop:pop", "item_vec"], "entity_rows": [{"item_id": 1}],
        "full_names": True, "include_timestamps": True,
    }),
    "predict": ("/predict", "/predict", {
        "model": "taste", "user": {"user_id": 1}, "items": [{"item_id": 1}, {"item_id": 2}], "k": 1,
    }),
    "predict-request-features": ("/predict", "/predict", {
        "model": "ctx", "user": {"user_id": 2}, "items": [{"item_id": 3}], "request_features": {"hour": 9.0},
    }),
    "feedback": ("/feedback", "/feedback", {
        "model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.5, "feedback_id": "{id}",
        "ts": "2026-01-01T00:00:00Z", "slice": "web",
    }),
    "feedback-request-features": ("/feedback", "/feedback", {
        "model": "ctx", "user": {"user_id": 3}, "item": {"item_id": 4}, "label": 0, "feedback_id": "{id}",
        "request_features": {"hour": 9.0},
    }),
    "feedback-batch": ("/feedback", "/feedback", {"observations": [{
        "model": "ctx", "user": {"user_id": 3}, "item": {"item_id": 4}, "label": 1, "feedback_id": "{id}",
        "request_features": {"hour": 9.0},
    }]}),
    "push": ("/push", "/push", {
        "view": "{view}", "rows": [{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 2}],
        "push_id": "{id}",
    }),
    "activate": ("/models/taste/activate", "/models/{model}/activate", {"version": 2}),
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and index of a JSON value, outermost first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield (*prefix, key)
        yield from paths(inner, (*prefix, key))


def mutated(body: dict[str, Any], path: tuple[Any, ...], replacement: str | object) -> str:
    """``body`` as JSON text, the value at ``path`` replaced by the JSON text ``replacement`` (or
    dropped, for ``DROPPED``)."""
    marker = "\u2063MUTATION\u2063"

    def rebuild(value: Any, rest: tuple[Any, ...]) -> Any:
        if not rest:
            return marker
        key, tail = rest[0], rest[1:]
        out = dict(value) if isinstance(value, dict) else list(value)
        if replacement is DROPPED and not tail:
            del out[key]
        else:
            out[key] = rebuild(value[key], tail)
        return out

    text = json.dumps(rebuild(body, path))
    return text if replacement is DROPPED else text.replace(json.dumps(marker), str(replacement))


def filled(body: dict[str, Any], server: Server, case_id: str) -> dict[str, Any]:
    view = "user_clicks" if server.streams else "user_stats"
    text = json.dumps(body).replace("{id}", case_id).replace("{view}", view)
    return json.loads(text)  # type: ignore[no-any-return]


def misnamed(field: str, changed: tuple[Any, ...]) -> bool:
    """Whether an error about a changed value names another key: neither the changed one, nor
    one inside it or around it, nor the whole body."""
    named, path = field.split("."), [str(p) for p in changed]
    depth = min(len(named), len(path))
    return field != "(body)" and named[:depth] != path[:depth]


@pytest.mark.parametrize("server", WITHOUT_TOKENS, indirect=True)
@pytest.mark.parametrize("name", sorted(VALID))
def test_mutations(server: Server, name: str) -> None:
    """The valid body is answered (200; a 400 for a push to a view without a stream). Each body
    with one value changed or dropped is answered by the rules of the module docstring, and an
    error about it, a 422 or an observation rejected from a batch, names the changed key. A body
    replaced whole by one that is not an object is a 422."""
    url, template_path, template = VALID[name]
    keys = BODY_KEYS[("POST", template_path)]
    response = server.client.post(url, json=filled(template, server, f"{name}-valid"))
    assert response.status_code == (400 if name == "push" and not server.streams else 200), response.text

    sent: list[tuple[bytes, tuple[Any, ...] | None]] = [(raw, None) for raw in ODD_BODIES]
    for where in paths(template):
        for number, replacement in enumerate((DROPPED, *ODD_VALUES)):
            case_id = f"{name}-{'.'.join(map(str, where))}-{number}"
            sent.append((mutated(filled(template, server, case_id), where, replacement).encode(), where))
    failures = []
    for raw, where in sent:
        response = server.client.post(url, content=raw, headers={"Content-Type": "application/json"})
        content_type = response.headers.get("content-type", "")
        found = problems(response.status_code, content_type, response.content, keys)
        if where is None and response.status_code != 422:
            found.append(f"a body that is not an object answered {response.status_code}, not 422")
        elif where is not None and not found and raw != b"{}":
            # ({} is left by dropping the only key of a batch, and read as one observation
            # without any of its keys: that 422 names the first of them.)
            if response.status_code == 422:
                named = [f["field"] for f in response.json()["error"]["fields"]][:1]
            elif response.status_code == 200 and "rejected" in response.json():
                named = [r["field"] for r in response.json()["rejected"]]
            else:
                named = []
            changed = ".".join(map(str, where))
            found += [f"the error names {f!r}, not the changed {changed!r}"
                      for f in named if misnamed(f, where)]
        if found:
            failures.append(f"{'; '.join(found)}\n  POST {url} {raw[:400]!r}\n  -> {response.status_code} "
                            f"{response.text[:400]}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures)


# -- defects found by this run: they fail until the server is fixed -----------------------------

#: The defects show on the embedded profile without tokens as on the others.
embedded_without_tokens = pytest.mark.parametrize("server", ["embedded-open"], indirect=True)


@embedded_without_tokens
@pytest.mark.parametrize("raw", [b"\xff", b"{"], ids=["not-utf8", "truncated"])
def test_defect_activate_answers_a_body_that_is_not_json_with_a_422(server: Server, raw: bytes) -> None:
    """DEFECT (found by test_mutations): ``POST /models/{model}/activate`` is the one route whose
    body FastAPI parses itself, and it answers a body that is not JSON unlike every other route
    (a 422 naming ``(body)``): bytes that are not UTF-8 are a 400 ``HTTPError`` without
    ``fields``, a status its OpenAPI does not declare; truncated JSON is a 422 naming field
    ``1``, FastAPI's character position, not a key of the body."""
    response = server.client.post(
        "/models/taste/activate", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["error"]["fields"]] == ["(body)"]


@embedded_without_tokens
def test_defect_a_request_feature_too_large_to_learn_from_is_named(server: Server) -> None:
    """DEFECT (found by test_mutations): feedback whose request feature makes the update
    non-finite (``hour: 1e300``) is refused with the field ``item`` (``observations.0.item`` in a
    batch) and the hint "check the item's and the user's feature values", though the item's
    features are fine and the value to fix is the one the client sent,
    ``request_features.hour``."""
    one = {"model": "ctx", "user": {"user_id": 3}, "item": {"item_id": 4}, "label": 0,
           "feedback_id": "huge-1", "request_features": {"hour": 1e300}}
    response = server.client.post("/feedback", json=one)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"].startswith("request_features"), response.text
    response = server.client.post("/feedback", json={"observations": [{**one, "feedback_id": "huge-2"}]})
    assert response.status_code == 200, response.text
    field = response.json()["rejected"][0]["field"]
    assert field.startswith("observations.0.request_features"), response.text
