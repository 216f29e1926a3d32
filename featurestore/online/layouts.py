"""Reading online values written under an earlier layout of a view.

A view's value layout is its features' names and dtypes, in order (``codec.layout_id``). After a
change (a feature added, removed or retyped) the online store holds values of the old layout
until the view is materialized again. ``LayoutTranslator`` lets a view's ``ValueCodec`` read
them: it decodes a value with the layout it was written under, found in the view's history (the
registry keeps every applied version: ``registry.evolution.value_layouts``), and keeps the
features that are still the same (same name, same dtype). The others are *stale*: None, and
``stale_layout`` in ``get_online_features``.

Format 1 values carry no layout id. The newest layout of the view that the value fits is taken,
and only the features on which every layout it fits agrees (their common prefix of names and
dtypes, which sit at the same bytes) are trusted; so a dtype changed to one of the same width is
reported stale, never read as the new type.

    >>> old = ValueCodec(["int64", "float64"], ["a", "b"])
    >>> new = ValueCodec(["int64", "int64", "string"], ["a", "b", "c"])
    >>> new.other_layouts = LayoutTranslator(new, lambda: [(("a", "b"), ("int64", "float64"))])
    >>> new.decode_status(old.encode_row([7, 0.5]))
    ((7, None, None), frozenset({1, 2}))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from featurestore.online.codec import FORMAT_VERSION, ValueCodec
from registry.errors import DataError

#: ``(names, dtypes)`` of a view's features, in declaration order.
Layout = tuple[Sequence[str], Sequence[str]]


class _Known:
    """An earlier layout: its codec, and where each current feature sits in it (None: stale)."""

    __slots__ = ("codec", "index", "pairs", "stale")

    def __init__(self, names: Sequence[str], dtypes: Sequence[str], current: ValueCodec) -> None:
        self.codec = ValueCodec(list(dtypes), list(names))
        self.pairs = tuple(zip(names, dtypes))
        where = {pair: j for j, pair in enumerate(self.pairs)}
        assert current.names is not None
        self.index = tuple(where.get(pair) for pair in zip(current.names, current.dtypes))
        self.stale = frozenset(i for i, j in enumerate(self.index) if j is None)

    def project(self, values: tuple[Any, ...], stale: frozenset[int]) -> tuple[Any, ...]:
        return tuple(None if j is None or i in stale else values[j] for i, j in enumerate(self.index))


class LayoutTranslator:
    """``ValueCodec.other_layouts`` of one view. ``history()`` returns the view's value layouts,
    newest first, or None when they cannot be read now (asked again at the next value)."""

    def __init__(self, current: ValueCodec, history: Callable[[], Sequence[Layout] | None]) -> None:
        if current.names is None:
            raise DataError("a layout translator needs a codec with feature names")
        self.current = current
        # Until the history is read, a format-1 value may be of an earlier layout of the same size.
        current.legacy_is_current = False
        self._history = history
        self._known: list[_Known] | None = None
        self._by_id: dict[int, _Known] = {}
        self._all_stale = frozenset(range(len(current.dtypes)))

    def __call__(self, payload: bytes) -> tuple[tuple[Any, ...], frozenset[int]]:
        known = self._load()
        if payload[0] == FORMAT_VERSION:
            old = self._by_id.get(int.from_bytes(payload[1:5], "little"))
            if old is None:  # a layout the registry does not know: nothing can be trusted
                return (None,) * len(self._all_stale), self._all_stale
            return old.project(old.codec.decode(payload), old.stale), old.stale
        return self._legacy(payload, known)

    def _legacy(self, payload: bytes, known: list[_Known]) -> tuple[tuple[Any, ...], frozenset[int]]:
        fitting: list[tuple[_Known, tuple[Any, ...]]] = []
        for layout in known:
            try:
                fitting.append((layout, layout.codec.decode_positional(payload)))
            except DataError:
                continue
        if not fitting:
            return (None,) * len(self._all_stale), self._all_stale
        chosen, values = fitting[0]
        trusted = len(chosen.pairs)
        for other, _ in fitting[1:]:
            if _bitmap(other) != _bitmap(chosen) or _fixed(other) != _fixed(chosen):
                # Another null-bitmap width shifts every field (9 features against 7 can give
                # the same total size), and another fixed section shifts a variable-width
                # value's tail: no feature sits at the same bytes in both.
                trusted = 0
                break
            common = 0
            for a, b in zip(chosen.pairs, other.pairs):
                if a != b:
                    break
                common += 1
            trusted = min(trusted, common)
        stale = chosen.stale | {i for i, j in enumerate(chosen.index) if j is not None and j >= trusted}
        return chosen.project(values, frozenset(stale)), frozenset(stale)

    def _load(self) -> list[_Known]:
        if self._known is not None:
            return self._known
        history = self._history()
        current = self.current
        assert current.names is not None
        layouts: list[Layout] = [(current.names, current.dtypes)]
        for names, dtypes in history or ():
            if (tuple(names), tuple(dtypes)) not in [(tuple(n), tuple(d)) for n, d in layouts]:
                layouts.append((names, dtypes))
        known = [_Known(names, dtypes, current) for names, dtypes in layouts]
        self._by_id = {k.codec.layout_id: k for k in known[1:]}  # type: ignore[misc]
        if history is not None:
            self._known = known
            # A view that never changed: its format-1 values are of this layout, read on the
            # codec's fast path from now on (the answer _legacy would give, without the search).
            current.legacy_is_current = len(known) == 1
        return known


def _bitmap(layout: _Known) -> int:
    """Bytes of a format-1 value's null bitmap under ``layout``."""
    return (len(layout.pairs) + 7) // 8


def _fixed(layout: _Known) -> int:
    """Bytes of the fixed section under ``layout`` (where a variable-width value's tail starts)."""
    return layout.codec.fixed_size - layout.codec.header_size
