"""The modality registry: one `ModalitySpec` per kind of data, looked up by name.

    from pipeline import modalities
    spec = modalities.get("images")          # KeyError-free: ValueError naming the known ones
    for spec in modalities.specs(): ...      # registration order: text, images, transactions

The three built-in modalities register when the registry is first used. A project adds its
own with `register(spec)` (see docs/architecture.md, "Adding a modality"); tests use
`registered(spec)`, which removes it again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pipeline.modalities.spec import (
    DedupOutput,
    DedupReportSpec,
    EvaluationSpec,
    IngestRequest,
    ModalitySpec,
    QualitySpec,
    TrainingSpec,
)

__all__ = ["DedupOutput", "DedupReportSpec", "EvaluationSpec", "IngestRequest",
           "ModalitySpec", "QualitySpec", "TrainingSpec", "find", "get", "names", "register",
           "registered", "specs", "unregister"]

_REGISTRY: dict[str, ModalitySpec] = {}
_LOCK = threading.Lock()
_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    with _LOCK:
        if _BUILTINS_LOADED:
            return
        from pipeline.modalities import images, text, transactions

        for spec in (text.SPEC, images.SPEC, transactions.SPEC):
            _REGISTRY.setdefault(spec.name, spec)
        _BUILTINS_LOADED = True


def register(spec: ModalitySpec, *, replace: bool = False) -> ModalitySpec:
    """Add `spec` to the registry (ValueError if the name is taken, unless `replace`)."""
    _load_builtins()
    if not spec.name or "/" in spec.name:
        raise ValueError(f"modality name {spec.name!r}: must be non-empty, without '/'")
    with _LOCK:
        if spec.name in _REGISTRY and not replace:
            raise ValueError(f"modality {spec.name!r} is already registered")
        _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a modality (no error when it is not registered)."""
    _load_builtins()
    with _LOCK:
        _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(spec: ModalitySpec) -> Iterator[ModalitySpec]:
    """Register `spec` for the duration of a `with` block."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def names() -> tuple[str, ...]:
    """The registered modality names, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY)


def specs() -> tuple[ModalitySpec, ...]:
    """The registered specs, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY.values())


def find(name: str) -> ModalitySpec | None:
    """The spec of `name`, or None."""
    _load_builtins()
    return _REGISTRY.get(name)


def get(name: str) -> ModalitySpec:
    """The spec of `name`; ValueError naming the registered modalities otherwise."""
    spec = find(name)
    if spec is None:
        raise ValueError(f"unknown modality {name!r}; registered: {', '.join(names())}")
    return spec
