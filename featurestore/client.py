"""A small HTTP client of the online server: features, predictions, health.

Errors come back as the project's own exceptions, rebuilt from the server's error JSON
(``{"error": {"type", "message", "hint", "retryable"}}``): a 404 is a ``NotFoundError`` with the
server's message and hint, a 503 a ``StoreUnavailableError``, and so on. A server that cannot be
reached is a ``StoreUnavailableError`` too (retryable).

>>> with FeatureStoreClient("http://127.0.0.1:8080") as client:  # doctest: +SKIP
...     client.predict("taste", {"user_id": 7}, [{"item_id": 1}, {"item_id": 2}], k=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from registry import errors as e

# Error types the server may name -> the class to raise here. Anything else falls back on the
# HTTP status.
_BY_NAME: dict[str, type[e.FeatureStoreError]] = {
    cls.__name__: cls
    for cls in (
        e.FeatureStoreError, e.UserError, e.ConfigError, e.NotFoundError, e.BreakingChangeError,
        e.DataError, e.ConflictError, e.StoreUnavailableError,
    )
}
_BY_STATUS: dict[int, type[e.FeatureStoreError]] = {
    400: e.UserError, 404: e.NotFoundError, 409: e.ConflictError, 422: e.DataError, 503: e.StoreUnavailableError,
}


class ValidationError(e.UserError):
    """The server rejected the request body (HTTP 422); ``fields`` lists each bad field."""

    http_status = 422

    def __init__(self, message: str, *, hint: str | None = None, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.fields = fields or []


class FeatureStoreClient:
    """Talks to ``featurestore serve``. ``token`` is sent as a bearer token when given; pass
    ``http_client`` to reuse a configured ``httpx.Client`` (or a test client)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._own = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._headers = headers

    # -- endpoints ------------------------------------------------------------------------------
    def features(
        self,
        features: Sequence[str] | str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        full_names: bool = False,
        include_timestamps: bool = False,
    ) -> dict[str, Any]:
        """``POST /features``, like ``FeatureStore.get_online_features``: ``features`` is a list
        of references or a feature service name. Returns ``{"registry_version", "entity_rows",
        "features": {name: {"values", "statuses"}}}``."""
        body: dict[str, Any] = {
            "entity_rows": [dict(r) for r in entity_rows],
            "full_names": full_names,
            "include_timestamps": include_timestamps,
        }
        if isinstance(features, str):
            body["feature_service"] = features
        else:
            body["features"] = list(features)
        return self._post("/features", body)

    def predict(
        self,
        model: str,
        user: Mapping[str, Any],
        items: Sequence[Mapping[str, Any]],
        k: int | None = None,
        request_features: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """``POST /predict``: ``{"prediction_id", "model", "model_version", "scores": [...]}``."""
        body: dict[str, Any] = {"model": model, "user": dict(user), "items": [dict(i) for i in items]}
        if k is not None:
            body["k"] = k
        if request_features is not None:
            body["request_features"] = dict(request_features)
        return self._post("/predict", body)

    def health(self) -> dict[str, Any]:
        """``GET /health``; a server whose stores are down answers 503, returned here as is."""
        response = self._send("GET", "/health")
        if response.status_code in (200, 503):
            return response.json()  # type: ignore[no-any-return]
        raise _error(response)

    # -- plumbing -------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._send("POST", path, json=body)
        if response.status_code != 200:
            raise _error(response)
        return response.json()  # type: ignore[no-any-return]

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=self._headers, **kwargs)
        except httpx.TransportError as exc:
            raise e.StoreUnavailableError(
                f"the feature server at {self.base_url} cannot be reached ({type(exc).__name__}: {exc})",
                hint="start it with `featurestore serve` or check the URL",
            ) from exc

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> FeatureStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error(response: httpx.Response) -> e.FeatureStoreError:
    try:
        body = response.json()["error"]
        kind, message, hint = body.get("type", ""), body["message"], body.get("hint")
    except (ValueError, KeyError, TypeError):
        return e.FeatureStoreError(
            f"the server answered HTTP {response.status_code}: {response.text[:200]}"
        )
    if kind == "ValidationError":
        return ValidationError(message, hint=hint, fields=body.get("fields"))
    # DefinitionError is not rebuilt by name: its constructor takes issues, not a message.
    cls = _BY_NAME.get(kind) or _BY_STATUS.get(response.status_code, e.FeatureStoreError)
    return cls(message, hint=hint)
