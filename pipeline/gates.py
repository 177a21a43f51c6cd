"""Gates: thresholds on a stage's figures that stop the run, with the numbers in the message.

Pure Python over plain dicts (no Spark, no torch), so the Spark stages (data-quality
figures of pipeline.quality) and the Ray stages (evaluation metrics) check their gates
with the same code. A gate is a `GateSpec`: a `GatesConfig` field, where its figure lives
in the figures dict, a human name and the comparison that passes. The data gates below
apply to every modality; each modality adds its own metric gates in its spec
(pipeline.modalities).

`evaluate_gates` returns every applicable gate's result; `enforce_gates` raises
`QualityGateError` naming each failing figure, its value and its threshold.

A configured gate whose figure is present but undefined (None or NaN: PR-AUC of a test
split without positives, accuracy of an empty split) FAILS: an unknown figure cannot show
that the threshold holds. The figures may say why under `UNDEFINED_KEY`, a mapping from
the figure's dotted path (`metrics.pr_auc`) to a sentence that the message quotes. A gate
whose figure is absent altogether (metrics before evaluation) does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pipeline.config import GatesConfig


@dataclass(frozen=True)
class GateSpec:
    """One gate: `GatesConfig.<field>` compared with the figure at `path`."""

    field: str
    path: tuple[str, ...]
    figure: str  # human name, e.g. "quarantine rate"
    op: Literal["<=", ">="]


#: the gates every modality's data-quality figures are checked against
DATA_GATES: tuple[GateSpec, ...] = (
    GateSpec("max_quarantine_rate", ("quarantine_rate", "total"), "quarantine rate", "<="),
    GateSpec("max_duplicate_rate", ("duplicate_rate", "total"), "duplicate rate", "<="),
)


@dataclass(frozen=True)
class GateResult:
    """One gate checked against one modality's figures."""

    gate: str
    modality: str
    figure: str  # human name of the figure, e.g. "quarantine rate"
    value: float | None  # None: the figure is undefined, and the gate failed
    threshold: float
    op: str  # the comparison that passes: "<=" or ">="
    passed: bool
    undefined: str | None = None  # why the figure is undefined, when value is None

    @property
    def message(self) -> str:
        if self.value is None:
            places = _places(self.threshold, self.threshold)
            return (f"gate {self.gate} failed for {self.modality}: {self.figure} is "
                    f"undefined: {self.undefined or UNDEFINED_FALLBACK}; it cannot be shown "
                    f"{self.op} {self.threshold:.{places}f}")
        places = _places(self.value, self.threshold)
        value, threshold = f"{self.value:.{places}f}", f"{self.threshold:.{places}f}"
        if self.passed:
            return (f"gate {self.gate} passed for {self.modality}: {self.figure} {value} "
                    f"{self.op} {threshold}")
        bad_op = ">" if self.op == "<=" else "<"
        return (f"gate {self.gate} failed for {self.modality}: {self.figure} {value} "
                f"{bad_op} {threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


#: where figures say why a figure is undefined: {dotted path of the figure: sentence}
UNDEFINED_KEY = "undefined"
UNDEFINED_FALLBACK = "the figure is null or NaN (e.g. a split without positive labels)"

# A failure is a GateResult with passed=False; the alias names what check_gates returns.
GateFailure = GateResult


class QualityGateError(RuntimeError):
    """One or more gates failed; the message lists each, with value and threshold."""

    def __init__(self, failures: list[GateResult]) -> None:
        self.failures = failures
        super().__init__("; ".join(f.message for f in failures))


def _places(value: float, threshold: float) -> int:
    """Fewest decimals (2..6) that show the threshold as configured and at which the value
    and the threshold read differently."""
    exact = next((p for p in range(2, 7) if round(threshold, p) == threshold), 6)
    for places in range(exact, 7):
        if round(value, places) != round(threshold, places):
            return places
    return exact


def _by_modality(figures: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "modality" in figures:
        return [figures]
    return [f for f in figures.values() if isinstance(f, Mapping) and "modality" in f]


def gates_of(modality: str) -> tuple[GateSpec, ...]:
    """The data gates plus the modality's own metric gates (from its spec)."""
    from pipeline.modalities import find

    spec = find(modality)
    return DATA_GATES + (spec.metric_gates if spec is not None else ())


def evaluate_gates(figures: Mapping[str, Any], gates: GatesConfig,
                   specs: Iterable[GateSpec] | None = None) -> list[GateResult]:
    """Every applicable gate's result, for one modality's figures or a {modality: figures}
    mapping. Gates whose figure is absent (e.g. metrics before evaluation) or whose
    threshold is not configured (None) are skipped; a configured gate whose figure is
    present but None or NaN fails, with the reason from the figures' `UNDEFINED_KEY`."""
    results = []
    for fig in _by_modality(figures):
        modality = str(fig["modality"])
        reasons = fig.get(UNDEFINED_KEY)
        for gate in (specs if specs is not None else gates_of(modality)):
            configured = getattr(gates, gate.field, None)
            if configured is None:  # optional gates are None when off
                continue
            present, value = _lookup(fig, gate.path)
            if not present:
                continue
            threshold = float(configured)
            v = _finite(value)
            if v is None:
                why = reasons.get(".".join(gate.path)) if isinstance(reasons, Mapping) else None
                results.append(GateResult(gate.field, modality, gate.figure, None, threshold,
                                          gate.op, False, str(why) if why else None))
                continue
            passed = v <= threshold if gate.op == "<=" else v >= threshold
            results.append(GateResult(gate.field, modality, gate.figure, v, threshold,
                                      gate.op, passed))
    return results


def _lookup(fig: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    """(whether the figure at `path` is present, its value)."""
    value: Any = fig
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _finite(value: Any) -> float | None:
    """The figure as a float; None when it is null, NaN, infinite or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_gates(figures: Mapping[str, Any], gates: GatesConfig) -> list[GateFailure]:
    """The failing gates (empty when all pass)."""
    return [r for r in evaluate_gates(figures, gates) if not r.passed]


def enforce_gates(figures: Mapping[str, Any], gates: GatesConfig) -> list[GateResult]:
    """Raise `QualityGateError` if any gate fails; otherwise return every gate's result."""
    results = evaluate_gates(figures, gates)
    failures = [r for r in results if not r.passed]
    if failures:
        raise QualityGateError(failures)
    return results
