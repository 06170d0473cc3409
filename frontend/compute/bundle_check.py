"""Structural checks of a profile bundle before any table is used (callable by the profile reader).

`check_bundle(model_dir, dtype, tp, hardware=...)` reads `<dtype>/meta.yaml` and
the `<dtype>/tp<N>/` tables and raises BundleError naming `file:line` and the
column for anything a reader would trip over: unreadable or non-mapping YAML,
missing tables or columns, empty tables, non-numeric / NaN / infinite /
negative cells, duplicate axis points. It returns warnings for what is usable
but suspicious: a bundle measured on another device than the instance's.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from frontend.errors import UserError

# table -> (integer axis columns, required)
TABLES: dict[str, tuple[tuple[str, ...], bool]] = {
    "dense.csv": (("tokens",), True),
    "per_sequence.csv": (("sequences",), True),
    "attention.csv": (("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"), True),
    "moe.csv": (("tokens", "activated_experts"), False),
}
MAX_ROWS = 5_000_000


class BundleError(UserError):
    """A profile bundle that cannot be used; the message names the file (and line, column)."""


def read_meta(vdir: Path) -> dict[str, Any]:
    path = vdir / "meta.yaml"
    if not path.is_file():
        have = sorted(p.name for p in vdir.parent.iterdir() if (p / "meta.yaml").is_file()) if vdir.parent.is_dir() else []
        raise BundleError(f"{vdir.parent}: no {vdir.name}/meta.yaml (bundle has dtypes {have or 'none'})")
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise BundleError(f"{path}: not valid YAML ({at}{getattr(e, 'problem', None) or e})") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: must be a YAML mapping of bundle facts")
    return meta


def _number(v: str | None, path: Path, line: int, col: str, integer: bool) -> float:
    try:
        x = float(v) if v is not None else math.nan
    except ValueError:
        raise BundleError(f"{path}:{line}: column {col!r} is not a number ({v!r})") from None
    if not math.isfinite(x):
        raise BundleError(f"{path}:{line}: column {col!r} is not finite ({v!r})")
    if x < 0:
        raise BundleError(f"{path}:{line}: column {col!r} is negative ({v})")
    if integer and x != int(x):
        raise BundleError(f"{path}:{line}: column {col!r} must be an integer ({v})")
    return x


def check_table(path: Path, axes: tuple[str, ...]) -> int:
    """Rows of one table, after checking its columns and cells; BundleError naming file:line otherwise."""
    keyed = "layer" if path.name in ("dense.csv", "per_sequence.csv") else None
    need = ((keyed,) if keyed else ()) + axes + ("time_us",)
    try:
        f = path.open(newline="")
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    seen: dict[tuple, float] = {}
    n = 0
    with f:
        try:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in need if c not in cols]
            if missing:
                raise BundleError(f"{path}: missing column(s) {missing} (has {cols})")
            for n, row in enumerate(reader, 1):
                line = n + 1
                if n > MAX_ROWS:
                    raise BundleError(f"{path}: more than {MAX_ROWS:,} rows")
                if None in row or any(row.get(c) is None for c in need):
                    raise BundleError(f"{path}:{line}: wrong number of cells")
                key = tuple([row[keyed]] if keyed else []) + tuple(
                    _number(row[c], path, line, c, True) for c in axes)
                t = _number(row["time_us"], path, line, "time_us", False)
                if key in seen and seen[key] != t:
                    raise BundleError(f"{path}:{line}: duplicate point {dict(zip(need, key, strict=False))} with "
                                      f"another time_us ({seen[key]} vs {t})")
                seen[key] = t
        except UnicodeDecodeError as e:
            raise BundleError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except csv.Error as e:
            raise BundleError(f"{path}: not valid CSV ({e})") from None
    if n == 0:
        raise BundleError(f"{path}: holds no rows")
    return n


def check_bundle(model_dir: Path, dtype: str, tp: int, hardware: str | None = None) -> list[str]:
    """Raise BundleError for an unusable bundle; return warnings (e.g. profiled on another device)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BundleError(f"profile bundle {model_dir} is not a directory")
    vdir = model_dir / dtype
    meta = read_meta(vdir)
    tdir = vdir / f"tp{tp}"
    if not tdir.is_dir():
        have = sorted(p.name for p in vdir.glob("tp*"))
        raise BundleError(f"{vdir}: no tp{tp}/ tables (bundle has {have or 'none'})")
    for name, (axes, required) in TABLES.items():
        p = tdir / name
        if not p.is_file():
            if required:
                raise BundleError(f"{p}: missing")
            continue
        check_table(p, axes)
    skew = tdir / "skew_fit.csv"
    if skew.is_file():
        try:
            with skew.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise BundleError(f"{skew}: cannot read ({e})") from None
        for i, r in enumerate(rows, 2):
            if "alpha" not in r or r["alpha"] is None:
                raise BundleError(f"{skew}:{i}: no 'alpha' cell")
            try:
                a = float(r["alpha"])
            except ValueError:
                raise BundleError(f"{skew}:{i}: column 'alpha' is not a number ({r['alpha']!r})") from None
            if not math.isfinite(a):
                raise BundleError(f"{skew}:{i}: column 'alpha' is not finite")
    warnings = []
    measured_on = meta.get("hardware")
    if hardware and measured_on and str(measured_on).lower() != hardware.lower():
        gpu = f" ({meta['gpu']})" if meta.get("gpu") else ""
        warnings.append(f"profile bundle {model_dir} was measured on {measured_on}{gpu} but the instance runs on "
                        f"{hardware}: its timings describe the other device")
    return warnings
