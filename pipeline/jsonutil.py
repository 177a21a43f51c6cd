"""One JSON-cleaning helper for the whole package (no heavy imports: no numpy, no Spark).

`json_clean(obj)` turns what stages compute into strict-JSON-ready values: numpy scalars
and arrays to Python numbers and lists, non-finite floats (NaN, inf: undefined figures) to
None, Decimals to floats, dates and times to ISO strings, dataclasses to dicts, sets to
sorted lists, mapping keys to strings. `json.dumps(json_clean(x), allow_nan=False)` works
for anything the pipeline reports.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from decimal import Decimal
from pathlib import PurePath
from typing import Any

__all__ = ["json_clean"]


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_clean(obj: Any) -> Any:
    """A strict-JSON-ready copy of `obj` (see the module docstring)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return _number(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [json_clean(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, Decimal):
        return _number(float(obj))
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return json_clean(asdict(obj))
    if type(obj).__module__ == "numpy":
        # numpy scalars (np.float32, np.int64, np.bool_, np.datetime64...) and arrays,
        # recognized without importing numpy.
        if hasattr(obj, "tolist") and int(getattr(obj, "ndim", 0) or 0) > 0:
            return json_clean(obj.tolist())
        if hasattr(obj, "item"):
            return json_clean(obj.item())
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", errors="replace")
    if hasattr(obj, "__float__"):
        return _number(float(obj))
    return str(obj)
