"""Which stage failures are worth another attempt, and how long to wait before it.

A failure is retried only when it is transient: an exception that is an instance of the
`RetryableError` marker class (a stage or backend raises it, or a subclass, to say "try
again"), or whose type is one of the transient errors listed in `TRANSIENT_ERRORS`. Anything
else (bad data, a failed quality gate, a bug) fails the stage at once: retrying would only
repeat it.

The wait grows exponentially from `initial_s` by `multiplier` per attempt, capped at
`max_s`: attempt 1 fails -> wait initial_s, attempt 2 fails -> initial_s * multiplier, ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.config import OrchestratorConfig

log = logging.getLogger(__name__)


class RetryableError(Exception):
    """Marker: the failure is transient and the stage may be attempted again."""


# Transient error types, by fully qualified name so that checking them imports neither
# Ray nor py4j. Matched against every class in the exception's MRO, so subclasses count
# (ConnectionResetError, ConnectionRefusedError and BrokenPipeError are ConnectionErrors;
# socket.timeout is TimeoutError).
TRANSIENT_ERRORS: frozenset[str] = frozenset({
    "builtins.ConnectionError",
    "builtins.TimeoutError",
    # Spark driver <-> JVM gateway lost its socket.
    "py4j.protocol.Py4JNetworkError",
    # Ray: the cluster lost a process, a node or a reply; the work itself was fine.
    "ray.exceptions.RaySystemError",
    "ray.exceptions.ActorDiedError",
    "ray.exceptions.ActorUnavailableError",
    "ray.exceptions.NodeDiedError",
    "ray.exceptions.GetTimeoutError",
    "ray.exceptions.ObjectLostError",
    "ray.exceptions.OwnerDiedError",
    "ray.exceptions.WorkerCrashedError",
})

# Wrappers whose own type says nothing: Ray re-raises a task's exception as RayTaskError
# (with the original as `.cause`), Ray Train as TrainingFailedError (original as
# `__cause__`). They are retryable exactly when what they wrap is.
_WRAPPERS: frozenset[str] = frozenset({
    "ray.exceptions.RayTaskError",
    "ray.train.base_trainer.TrainingFailedError",
    "ray.train.TrainingFailedError",  # Ray Train v2 sets __module__ to the package
})


def _qualified_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def is_retryable(exc: BaseException, _depth: int = 0) -> bool:
    """True when `exc` is transient (see the module docstring); never for KeyboardInterrupt."""
    if isinstance(exc, RetryableError):
        return True
    if not isinstance(exc, Exception) or _depth > 5:
        return False
    names = _qualified_names(exc)
    if names & TRANSIENT_ERRORS:
        return True
    if names & _WRAPPERS or any(n.endswith("RayTaskError") for n in names):
        # RayTaskError(ConnectionError) is a dynamic subclass of both; the plain one
        # carries the original in `.cause`.
        inner = getattr(exc, "cause", None) or exc.__cause__
        return isinstance(inner, BaseException) and is_retryable(inner, _depth + 1)
    return False


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a failed attempt: retry after `delay_s`, or give up."""

    retry: bool
    delay_s: float
    attempt: int
    max_attempts: int
    message: str


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for retryable stage failures."""

    max_attempts: int = 3
    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_s < 0 or self.max_s < 0:
            problems.append(f"backoff must be >= 0 s, got initial {self.initial_s}, "
                            f"max {self.max_s}")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier}")
        if problems:
            raise ValueError("invalid retry policy: " + "; ".join(problems))

    @classmethod
    def from_config(cls, cfg: OrchestratorConfig) -> RetryPolicy:
        return cls(max_attempts=cfg.max_attempts, initial_s=cfg.backoff_initial_s,
                   max_s=cfg.backoff_max_s)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1)))

    def decide(self, stage: str, attempt: int, exc: BaseException) -> RetryDecision:
        """Retry or give up after attempt `attempt` of `stage` raised `exc`; logs why."""
        cause = f"{type(exc).__name__}: {exc}"
        head = f"stage {stage} attempt {attempt}/{self.max_attempts} failed with {cause}"
        if not is_retryable(exc):
            message = f"{head}; not retryable"
            log.error("%s", message)
            return RetryDecision(False, 0.0, attempt, self.max_attempts, message)
        if attempt >= self.max_attempts:
            message = f"{head}; no attempts left"
            log.error("%s", message)
            return RetryDecision(False, 0.0, attempt, self.max_attempts, message)
        delay = self.delay(attempt)
        message = f"{head}; retrying in {delay:.1f} s"
        log.warning("%s", message)
        return RetryDecision(True, delay, attempt, self.max_attempts, message)
