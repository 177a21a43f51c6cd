"""Deduplication: exact (content hash), MinHash-LSH near-duplicate text, components.

- `exact.exact_dedup`: group by a content hash, keep one row by a preference order.
- `minhash`: numpy shingle hashing, MinHash signatures, band hashes, S-curve helpers.
- `lsh.text_near_dedup`: the Spark near-duplicate stage for text.
- `components.connected_components`: connected components of a Spark edge frame.

Spark-free users (benchmarks, tools) can import `pipeline.dedup.minhash` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DUPLICATES_SCHEMA",
    "NearDupResult",
    "connected_components",
    "exact_dedup",
    "remap_clusters",
    "text_near_dedup",
]

if TYPE_CHECKING:
    from pipeline.dedup.components import connected_components
    from pipeline.dedup.exact import DUPLICATES_SCHEMA, exact_dedup, remap_clusters
    from pipeline.dedup.lsh import NearDupResult, text_near_dedup

_HOMES = {
    "connected_components": "pipeline.dedup.components",
    "DUPLICATES_SCHEMA": "pipeline.dedup.exact",
    "exact_dedup": "pipeline.dedup.exact",
    "remap_clusters": "pipeline.dedup.exact",
    "NearDupResult": "pipeline.dedup.lsh",
    "text_near_dedup": "pipeline.dedup.lsh",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import pipeline.dedup.minhash` (executors, benchmarks) or phash
    # does not import pyspark.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pipeline.dedup' has no attribute {name!r}")
