"""Reading online values written under an earlier layout of a view.

A view's value layout is its features' names, dtypes and meanings, in order (``codec.layout_id``;
a meaning is an aggregation: function, column, window and slide; a plain feature has none).
After a change (a feature added, removed, retyped or re-aggregated) the online store holds
values of the old layout until the view is materialized again. ``LayoutTranslator`` lets a
view's ``ValueCodec`` read them: it decodes a value with the layout it was written under, found
in the view's history (the registry keeps every applied version:
``registry.evolution.value_layouts``), and keeps the features that are still the same (same
name, dtype and meaning). The others are *stale*: None, and ``stale_layout`` in
``get_online_features``.

Meanings count only for a codec given them (``ValueCodec(..., meanings=...)``, an aggregated
view): for any other the history is read by names and dtypes alone, as before meanings existed.
Such a codec may still meet values whose id was computed without meanings (written before
meanings went into the id): one is read like the layouts of the history with those names and
dtypes, and a feature is trusted only if all of them give it the current meaning.

Format 1 values carry no layout id. The newest layout of the view that the value fits is taken,
and only the features on which every layout it fits agrees (their common prefix of names,
dtypes and meanings, which sit at the same bytes) are trusted; so a dtype changed to one of the
same width, or an aggregation changed, is reported stale, never read as the new one.

    >>> old = ValueCodec(["int64", "float64"], ["a", "b"])
    >>> new = ValueCodec(["int64", "int64", "string"], ["a", "b", "c"])
    >>> new.other_layouts = LayoutTranslator(new, lambda: [(("a", "b"), ("int64", "float64"))])
    >>> new.decode_status(old.encode_row([7, 0.5]))
    ((7, None, None), frozenset({1, 2}))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from featurestore.online.codec import FORMAT_VERSION, ValueCodec, layout_id
from registry.errors import DataError

#: ``(names, dtypes)`` or ``(names, dtypes, meanings)`` of a view's features, in declaration
#: order (``registry.evolution.value_layouts`` gives the second).
Layout = tuple[Sequence[str], Sequence[str]] | tuple[Sequence[str], Sequence[str], Sequence[str | None]]
#: A feature as the translator compares it: (name, dtype, meaning).
_Slot = tuple[str, str, str | None]


class _Known:
    """An earlier layout: its codec, and where each current feature sits in it (None: stale)."""

    __slots__ = ("codec", "index", "pairs", "stale")

    def __init__(self, slots: Sequence[_Slot], index: Sequence[int | None]) -> None:
        names, dtypes, meanings = (list(c) for c in zip(*slots))
        self.codec = ValueCodec(dtypes, names, meanings=meanings)
        self.pairs = tuple(slots)
        self.index = tuple(index)
        self.stale = frozenset(i for i, j in enumerate(self.index) if j is None)

    @classmethod
    def of(cls, slots: Sequence[_Slot], current: Sequence[_Slot]) -> _Known:
        """``slots``, each current feature found by name, dtype and meaning."""
        where = {slot: j for j, slot in enumerate(slots)}
        return cls(slots, [where.get(slot) for slot in current])

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
        # Meanings count only for a codec that has them (see the module docstring).
        self._meanings = current.meanings is not None
        self._current = self._slots((current.names, current.dtypes, current.meanings or ()))
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

    def _slots(self, layout: Layout) -> tuple[_Slot, ...]:
        names, dtypes = layout[0], layout[1]
        meanings = layout[2] if len(layout) > 2 and self._meanings else ()  # type: ignore[misc]
        return tuple(zip(names, dtypes, meanings or (None,) * len(names)))

    def _load(self) -> list[_Known]:
        if self._known is not None:
            return self._known
        history = self._history()
        layouts = [self._current]
        for layout in history or ():
            slots = self._slots(layout)
            if slots not in layouts:
                layouts.append(slots)
        known = [_Known.of(slots, self._current) for slots in layouts]
        self._by_id = {k.codec.layout_id: k for k in known[1:]}  # type: ignore[misc]
        if self._meanings:
            self._add_blind_ids(known)
        if history is not None:
            self._known = known
            # A view that never changed: its format-1 values are of this layout, read on the
            # codec's fast path from now on (the answer _legacy would give, without the search).
            self.current.legacy_is_current = len(known) == 1
        return known

    def _add_blind_ids(self, known: list[_Known]) -> None:
        """Ids computed without meanings (values written before meanings went into the id):
        each stands for every known layout of those names and dtypes, and a feature is trusted
        only if all of them give it its current meaning."""
        groups: dict[int, list[_Known]] = {}
        for k in known:
            groups.setdefault(layout_id([s[0] for s in k.pairs], [s[1] for s in k.pairs]), []).append(k)
        for blind, group in groups.items():
            if blind in self._by_id or blind == self.current.layout_id:
                continue  # a layout without meanings: that is its id already
            where = {s[:2]: j for j, s in enumerate(group[0].pairs)}
            index = []
            for slot in self._current:
                j = where.get(slot[:2])
                index.append(j if j is not None and all(k.pairs[j][2] == slot[2] for k in group) else None)
            self._by_id[blind] = _Known([(n, d, None) for n, d, _ in group[0].pairs], index)


def _bitmap(layout: _Known) -> int:
    """Bytes of a format-1 value's null bitmap under ``layout``."""
    return (len(layout.pairs) + 7) // 8


def _fixed(layout: _Known) -> int:
    """Bytes of the fixed section under ``layout`` (where a variable-width value's tail starts)."""
    return layout.codec.fixed_size - layout.codec.header_size
