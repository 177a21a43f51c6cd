"""Cross-field and range checks of a built `PipelineConfig` (one pass, every problem).

Kept apart from the dataclasses in `pipeline/config.py`: each check returns a sentence
naming its dotted key, and `config_from_dict` reports them all in one `ConfigError`.
Sections with settings of their own (spark, ray, gates, evaluate) contribute through their
`problems()` method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig


def check_values(cfg: PipelineConfig) -> list[str]:
    """Cross-field and range checks, each returning a sentence naming the key."""
    p: list[str] = []

    def positive(key: str, value: float) -> None:
        if value <= 0:
            p.append(f"{key}: must be > 0, got {value}")

    def fraction(key: str, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            p.append(f"{key}: must be in [0, 1], got {value}")

    from pipeline import modalities
    from pipeline.storage import run_id_problem

    if cfg.run_id is not None and (problem := run_id_problem(cfg.run_id)) is not None:
        p.append(f"run_id: {problem}")
    known = modalities.names()
    for m in cfg.modalities:
        if m not in known:
            p.append(f"modalities: unknown modality {m!r}; choose from {', '.join(known)}")
    if not cfg.modalities:
        p.append("modalities: at least one modality is needed")
    positive("synth.scale", cfg.synth.scale)
    positive("spark.shuffle_partitions", cfg.spark.shuffle_partitions)
    if cfg.ray.backend == "job" and not cfg.ray.job_address:
        p.append("ray.job_address: needed when ray.backend is 'job' (e.g. "
                 "http://127.0.0.2:8265)")
    o = cfg.orchestrator
    if o.max_attempts < 1:
        p.append(f"orchestrator.max_attempts: must be >= 1, got {o.max_attempts}")
    positive("orchestrator.backoff_initial_s", o.backoff_initial_s)
    if o.backoff_max_s < o.backoff_initial_s:
        p.append(f"orchestrator.backoff_max_s: must be >= backoff_initial_s "
                 f"({o.backoff_initial_s}), got {o.backoff_max_s}")
    positive("orchestrator.lock_stale_s", o.lock_stale_s)
    if cfg.ray.num_cpus is not None:
        positive("ray.num_cpus", cfg.ray.num_cpus)
    d = cfg.dedup
    for key in ("shingle_n", "num_perm", "bands", "rows", "retry_window_s"):
        positive(f"dedup.{key}", getattr(d, key))
    if d.bands * d.rows > d.num_perm:
        p.append(
            f"dedup.bands x dedup.rows: {d.bands} x {d.rows} = {d.bands * d.rows} "
            f"exceeds dedup.num_perm={d.num_perm}"
        )
    fraction("dedup.jaccard_threshold", d.jaccard_threshold)
    if not 0 <= d.phash_max_hamming < 64:
        p.append(f"dedup.phash_max_hamming: must be in [0, 63], got {d.phash_max_hamming}")
    if d.dhash_max_hamming is not None and not 0 <= d.dhash_max_hamming < 64:
        p.append(f"dedup.dhash_max_hamming: must be in [0, 63] or null, got "
                 f"{d.dhash_max_hamming}")
    s = cfg.split
    for key in ("train", "val", "test"):
        fraction(f"split.{key}", getattr(s, key))
    if abs(s.train + s.val + s.test - 1.0) > 1e-9:
        p.append(f"split: train + val + test must sum to 1, got {s.train + s.val + s.test:g}")
    tr = cfg.train
    for key in ("epochs", "grad_accum_steps", "checkpoint_every_steps", "keep_best",
                "log_every_steps"):
        positive(f"train.{key}", getattr(tr, key))
    if tr.max_failures < -1:
        p.append(f"train.max_failures: must be >= -1 (-1 = unlimited), got {tr.max_failures}")
    if tr.scaling.num_workers < 0:
        p.append(f"train.scaling.num_workers: must be >= 0 (0 = Ray Train's local mode, in "
                 f"the driver process), got {tr.scaling.num_workers}")
    positive("train.scaling.cpus_per_worker", tr.scaling.cpus_per_worker)
    for spec in modalities.specs():
        if spec.training is not None:
            tc = spec.training.config(cfg)
            positive(f"train.{spec.name}.batch_size", tc.batch_size)
            positive(f"train.{spec.name}.lr", tc.lr)
        p.extend(spec.config_problems(cfg))
    for key in ("max_quarantine_rate", "max_duplicate_rate"):
        fraction(f"gates.{key}", getattr(cfg.gates, key))
    p.extend(cfg.spark.problems())
    p.extend(cfg.ray.problems())
    p.extend(cfg.gates.problems())
    p.extend(cfg.evaluate.problems())
    p.extend(cfg.tracking.problems())
    return p
