"""Summaries of session data (DataFrames, dicts of arrays, plain values) that compare across environments.

The fidelity tests run the AllenSDK in its own virtualenv (old numpy and pandas) and compare what it
returns with what ``abc_helpers`` returns on the same file. Both sides summarise with these functions,
which use only numpy, pandas and the standard library (the AllenSDK's script imports this file by
path): index name and values, column names and dtypes, and each column's values, either in full
(JSON values) or as a SHA-256 of a canonical form (float64 bytes, NaN kept; text as JSON), so that
two equal tables give equal summaries whatever the library versions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["jsonable", "summarise", "summarise_arrays", "summarise_frame"]


def jsonable(value: Any) -> Any:
    """Turn a value (numpy scalars and arrays, NaN, datetimes, lists, dicts) into JSON-able data."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return pd.Timestamp(value).tz_convert("UTC").isoformat() if value.tzinfo else pd.Timestamp(value).isoformat()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return [jsonable(v) for v in value]  # e.g. the AllenSDK's Coordinates (x, y, z)
    return str(value)


def _digest(values: pd.Series) -> str:
    """A SHA-256 of a column's values in a canonical form (numbers as float64 bytes, NaN for missing)."""
    if values.dtype.kind in "biuf" or str(values.dtype) in ("boolean", "Int64"):
        data = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return hashlib.sha256(json.dumps([jsonable(v) for v in values]).encode()).hexdigest()


def summarise_frame(df: pd.DataFrame, full: bool = True) -> dict:
    """Summarise a DataFrame: shape, index, columns, dtypes and (*full*) values or digests per column."""
    out: dict[str, Any] = {
        "n_rows": len(df), "index_name": df.index.name, "index": [jsonable(i) for i in df.index],
        "index_dtype": str(df.index.dtype), "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes]}
    key = "values" if full else "digests"
    out[key] = {}
    for position, column in enumerate(df.columns):
        series = df.iloc[:, position]
        out[key][f"{position}:{column}"] = [jsonable(v) for v in series] if full else _digest(series)
    return out


def summarise_arrays(arrays: dict) -> dict:
    """Summarise ``{id: array}``: each array's dtype, shape, and the SHA-256 of its float64 bytes."""
    return {str(int(k)): {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v)),
                          "sha256": hashlib.sha256(np.ascontiguousarray(np.asarray(v, dtype="float64")).tobytes()
                                                   ).hexdigest()}
            for k, v in arrays.items()}


def summarise(value: Any, full: bool = True) -> Any:
    """Summarise any value a session returns: a DataFrame, a dict of arrays, or plain data."""
    if isinstance(value, pd.DataFrame):
        return {"frame": summarise_frame(value, full=full)}
    if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return {"arrays": summarise_arrays(value)}
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size > 100:
        return {"array": summarise_arrays({0: value})["0"]}
    return {"value": jsonable(value)}
