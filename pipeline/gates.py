"""Gates: thresholds on a stage's figures that stop the run, with the numbers in the message.

Pure Python over plain dicts (no Spark, no torch), so the Spark stages (data-quality
figures of pipeline.quality) and the Ray stages (evaluation metrics) check their gates
with the same code. A gate is a `GateSpec`: a `GatesConfig` field, where its figure lives
in the figures dict, a human name and the comparison that passes. The data gates below
apply to every modality; each modality adds its own metric gates in its spec
(pipeline.modalities).

`evaluate_gates` returns every applicable gate's result; `enforce_gates` raises
`QualityGateError` naming each failing figure, its value and its threshold.
"""

from __future__ import annotations

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
    value: float
    threshold: float
    op: str  # the comparison that passes: "<=" or ">="
    passed: bool

    @property
    def message(self) -> str:
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
    threshold is not configured (None) are skipped."""
    results = []
    for fig in _by_modality(figures):
        modality = str(fig["modality"])
        for gate in (specs if specs is not None else gates_of(modality)):
            value: Any = fig
            for key in gate.path:
                value = value.get(key) if isinstance(value, Mapping) else None
            configured = getattr(gates, gate.field, None)
            if value is None or configured is None:  # optional gates are None when off
                continue
            threshold = float(configured)
            v = float(value)
            passed = v <= threshold if gate.op == "<=" else v >= threshold
            results.append(GateResult(gate.field, modality, gate.figure, v, threshold,
                                      gate.op, passed))
    return results


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
