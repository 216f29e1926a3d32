"""Splitting what follows a Beam job's first view name: our options, view names, Beam options.

argparse stops at the first positional (``argparse.REMAINDER``), so ``materialize`` and
``stream`` parse the rest themselves: known options are ours, ``--`` starts Beam's options, and
any other ``--option [value]`` passes through to Beam's PipelineOptions.
"""

from __future__ import annotations

from registry.errors import UserError

# option -> (attribute, takes a value)
Options = dict[str, tuple[str, bool]]
COMMON: Options = {"-r": ("repo", True), "--repo": ("repo", True), "--debug": ("debug", False)}


def split_rest(rest: list[str], options: Options) -> tuple[list[str], dict[str, object], list[str]]:
    """``(views, our options, beam args)``.

    >>> split_rest(["a", "--start", "2026-01-01", "b", "--", "--runner", "FlinkRunner"], {"--start": ("start", True)})
    (['a', 'b'], {'start': '2026-01-01'}, ['--runner', 'FlinkRunner'])
    """
    known = {**COMMON, **options}
    views: list[str] = []
    ours: dict[str, object] = {}
    beam_args: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--":
            beam_args.extend(rest[i + 1 :])
            break
        name, eq, value = token.partition("=")
        if name in known:
            attribute, takes_value = known[name]
            if not takes_value:
                ours[attribute] = True
            else:
                if not eq:
                    if i + 1 >= len(rest):
                        raise UserError(f"{name} needs a value", hint=f"e.g. {name}=... (see --help)")
                    i += 1
                    value = rest[i]
                ours[attribute] = value
        elif token.startswith("-"):
            beam_args.append(token)
            # `--option value`: a following non-option token is the option's value.
            if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                i += 1
                beam_args.append(rest[i])
        else:
            views.append(token)
        i += 1
    return views, ours, beam_args
