"""Which stages a `pipeline run` call runs: `--from`, `--until`, `--only`.

A pattern is an exact stage name (`train/text`) or a group prefix (`train` = every
`train/*` stage). Order is the order of the stage list, which is the graph order:

- `--from S`: the first stage S matches and every stage after it;
- `--until S`: every stage up to and including the last one S matches;
- both: the stages between them; `--only S` (repeatable): just the matched stages.

Stages outside the selection are not run; their published outputs feed selected stages.
"""

from __future__ import annotations

from collections.abc import Sequence


class SelectionError(ValueError):
    """A stage selection that cannot be honoured (unknown name, missing input...)."""


def valid_names(names: Sequence[str]) -> list[str]:
    """Every accepted pattern: group prefixes (`train`) and exact names, in graph order."""
    out: list[str] = []
    for name in names:
        group = name.split("/", 1)[0]
        if "/" in name and group not in out:
            out.append(group)
        if name not in out:
            out.append(name)
    return out


def match(names: Sequence[str], pattern: str) -> list[str]:
    """The stage names `pattern` selects, in graph order; `SelectionError` if none."""
    pattern = pattern.strip().rstrip("/")
    found = [n for n in names if n == pattern or n.startswith(pattern + "/")]
    if not found:
        raise SelectionError(f"unknown stage {pattern!r}; valid stages and groups: "
                             + ", ".join(valid_names(names)))
    return found


def select(names: Sequence[str], from_: str | None = None, until: str | None = None,
           only: Sequence[str] = ()) -> list[str]:
    """The selected stage names in graph order (all of them when nothing is given)."""
    if only and (from_ or until):
        raise SelectionError("use --only on its own, or --from/--until (not both)")
    if only:
        chosen = {n for pattern in only for n in match(names, pattern)}
        return [n for n in names if n in chosen]
    start = names.index(match(names, from_)[0]) if from_ else 0
    end = names.index(match(names, until)[-1]) if until else len(names) - 1
    if start > end:
        raise SelectionError(f"--from {from_} comes after --until {until} in the stage order: "
                             f"{', '.join(names)}")
    return list(names[start:end + 1])
