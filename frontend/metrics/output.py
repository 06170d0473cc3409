"""Output directories: checked before any work, filled in a staging directory, moved into place at the end.

A run (or validate, profile, a chakra dump) writes into `.<name>.partial-<pid>`
next to the target. Only when everything is written are the files moved into
the target; outputs a previous run left there under a name this command owns
(requests.csv next to an old programs.csv, ...) are removed first, so a target
never mixes two runs, and a failed run leaves nothing that looks finished.
Files the user put there under other names are left alone.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from frontend.errors import InternalError, UserError

# every name a run may write; stale ones are removed when a new run lands in the same directory
# `astraserve plot RUN_DIR` draws these into a run directory (frontend/metrics/plots.py): a later run there
# removes them with the rest of the earlier run's outputs, so no plot outlives the tables it was drawn from
RUN_PLOTS = ("latency_cdf.png", "throughput.png", "batch_size.png", "kv_usage.png")
RUN_OUTPUTS = ("requests.csv", "iterations.csv", "programs.csv", "summary.json", "run_info.json") + RUN_PLOTS
VALIDATE_OUTPUTS = ("validate.json", "validate_cdf.png", "validate_timeseries.png")


class OutputError(UserError):
    pass


def check_writable_dir(path: Path, flag: str) -> Path:
    """The directory `path` can be created or written; OutputError naming `flag` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: exists and is not a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{flag} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {probe} is not writable")
    return path


class StagedDir:
    """A staging directory beside `target`; commit() moves its files into `target`."""

    def __init__(self, target: Path, flag: str, owned: tuple[str, ...] = RUN_OUTPUTS, owned_glob: str | None = None
                 ) -> None:
        self.target = check_writable_dir(Path(target), flag)
        self.flag = flag
        self.owned = owned
        self.owned_glob = owned_glob  # entries of an earlier run matching it are removed on commit (e.g. iter*)
        parent = self.target.resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = parent / f".{self.target.name or 'out'}.partial-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir()
        except OSError as e:
            raise OutputError(f"{flag} {target}: cannot create a directory there ({e.strerror or e})") from None
        self.done = False

    def commit(self) -> Path:
        """Move the staged files into the target (replacing a previous run's outputs); remove the stage."""
        try:
            if not self.target.exists():
                os.replace(self.path, self.target)
            else:
                new = {p.name for p in self.path.iterdir()}
                for name in self.owned:
                    old = self.target / name
                    if name not in new and (old.is_file() or old.is_symlink()):
                        old.unlink()
                for old in sorted(self.target.glob(self.owned_glob)) if self.owned_glob else []:
                    if old.name not in new:
                        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
                for p in sorted(self.path.iterdir()):
                    dest = self.target / p.name
                    if dest.is_dir() and not dest.is_symlink():
                        shutil.rmtree(dest)
                    os.replace(p, dest)
                self.path.rmdir()
        except OSError as e:
            raise OutputError(f"{self.flag} {self.target}: cannot move outputs into place ({e.strerror or e})") from None
        self.done = True
        return self.target

    def discard(self) -> None:
        if not self.done:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _finite(obj: Any, where: str = "") -> Any:
    """Raise InternalError on NaN / infinity anywhere in a JSON-bound structure."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise InternalError(f"non-finite number {obj} at {where or '(top)'} of a JSON output")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")
    return obj


def dumps_json(obj: Any) -> str:
    """Strict JSON (no NaN / Infinity): a non-finite number is a bug, reported with its key path."""
    _finite(obj)
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(dumps_json(obj))
    return path
