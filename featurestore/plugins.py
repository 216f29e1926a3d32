"""The one importer of ``"package.module:Class"`` specs: backend maps name a class as text so
that a backend's heavy client is imported only when that backend is chosen.

Used by ``featurestore.online.factory`` (online stores) and ``featurestore.streams.base``
(stream readers and writers); each keeps its own ``type`` -> spec map.

    >>> from featurestore.online.base import OnlineStore
    >>> load_class("featurestore.online.memory:MemoryOnlineStore", OnlineStore,
    ...            what="online store backend", hint="fix BACKENDS").__name__
    'MemoryOnlineStore'
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from registry.errors import ConfigError

__all__ = ["load_class"]

T = TypeVar("T")


def load_class(spec: str, base: type[T], *, what: str, hint: str) -> type[T]:
    """The class ``spec`` names, checked to be a subclass of ``base``.

    ``what`` names the spec in errors ("online store backend"); ``hint`` says where the map
    that holds it lives. A malformed spec, a module that does not exist, a missing attribute or
    a class of another base is a ConfigError. An import error raised *inside* the module (a
    backend's client library is not installed) is the caller's to see, unchanged.
    """
    module_name, sep, class_name = spec.partition(":")
    if not (sep and module_name and class_name):
        raise ConfigError(
            f"{what} {spec!r} is not of the form 'package.module:Class'",
            hint=hint,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module exists but one of its own imports is missing
        raise ConfigError(
            f"{what} {spec!r}: there is no module {module_name!r}", hint=hint
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        article = "an" if base.__name__[:1].lower() in "aeiou" else "a"
        raise ConfigError(
            f"{what} {spec!r} is not {article} {base.__name__} subclass",
            hint=hint,
        )
    return cls
