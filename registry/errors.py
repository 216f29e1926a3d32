"""The one error root of the project.

Every error the project raises on purpose derives from ``FeatureStoreError``. The root lives in
the bottom package (``registry``) so that every layer above can raise and catch it without
importing anything heavier. Each class says whether a retry can help and which HTTP status the
online server maps it to; the CLI maps ``UserError`` to exit code 1 and everything else to 2.

    FeatureStoreError                 (internal, 500, exit 2)
    ├── UserError                     (400, exit 1)  the caller can fix it
    │   ├── ConfigError               featurestore.yaml / environment / arguments
    │   ├── DefinitionError           YAML definitions; carries every DefinitionIssue of a run
    │   ├── NotFoundError     (404)   an unknown object, feature reference, version
    │   ├── BreakingChangeError (409) apply refused a breaking change
    │   ├── InputError        (422)   one field of a request is bad; ``field`` names it
    │   └── DataError         (422)   source data does not match its definition
    ├── ConflictError         (409, retryable)  optimistic concurrency lost a race
    └── StoreUnavailableError (503, retryable)  Redis / PostgreSQL / a file store is down
"""

from __future__ import annotations

from dataclasses import dataclass


class FeatureStoreError(Exception):
    """Root of every error raised on purpose. ``hint`` says how to fix it."""

    retryable: bool = False
    http_status: int = 500
    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class UserError(FeatureStoreError):
    """Bad input that the caller can correct."""

    http_status = 400
    exit_code = 1


class ConfigError(UserError):
    """A missing or bad value in featurestore.yaml, the environment or an argument."""


@dataclass(frozen=True)
class DefinitionIssue:
    """One problem in a YAML definition, located as precisely as the YAML allows."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}"


class DefinitionError(UserError):
    """One or more invalid definitions; all issues of a run are reported together."""

    http_status = 422

    def __init__(self, issues: list[DefinitionIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.key))
        n = len(self.issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(
            f"{n} problem{'s' if n != 1 else ''} in the feature definitions:\n{lines}",
            hint="fix the lines above and run `featurestore validate` again",
        )

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}"


class NotFoundError(UserError):
    http_status = 404


class BreakingChangeError(UserError):
    http_status = 409


class InputError(UserError):
    """One field of a request (features, predict, feedback) is bad. ``field`` is its path in the
    request, e.g. ``user.user_id``, ``items.3``, ``entity_rows.0.item_id``,
    ``request_features.hour``; ``reason`` reads after it."""

    http_status = 422

    def __init__(self, field: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"`{field}` {reason}", hint=hint)
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple:
        return (_input_error, (self.field, self.reason, self.hint))


class DataError(UserError):
    """Source data that does not fit its declared schema."""

    http_status = 422


class ConflictError(FeatureStoreError):
    """Someone else changed the same state first; re-reading and retrying is safe."""

    retryable = True
    http_status = 409
    exit_code = 1


class StoreUnavailableError(FeatureStoreError):
    """A backing store (Redis, PostgreSQL, a file) cannot be reached."""

    retryable = True
    http_status = 503
    exit_code = 1


def _input_error(field: str, reason: str, hint: str | None) -> InputError:
    return InputError(field, reason, hint=hint)
