"""The project's error types: one for what a user got wrong, one for a broken invariant (a bug).

A UserError's str() is the whole user-facing message and names where the
problem is (file, `file:line`, field path or flag); the CLI prints it on one
line and exits 2. An InternalError means the simulator broke one of its own
invariants: the CLI reports it as a bug (exit 3) and points at the tracker,
never as a user error and never with exit 0.
"""

from __future__ import annotations

ISSUE_TRACKER = "the AstraServe issue tracker"
EXIT_USER = 2
EXIT_BUG = 3


class UserError(ValueError):
    """Bad input: a run file, catalog entry, workload, reference set, bundle, flag or binary."""


class ConfigError(UserError):
    """A run file (or a catalog entry it names) is invalid. str() is the user-facing message."""


class InternalError(RuntimeError):
    """An invariant inside the simulator does not hold: a bug, not a user mistake."""


def bug_message(e: BaseException) -> str:
    detail = str(e).splitlines()[0] if str(e) else ""
    kind = type(e).__name__
    return (f"internal error (a bug in AstraServe, not in your input): {kind}"
            f"{': ' + detail if detail else ''}. Please report it to {ISSUE_TRACKER} with the command and "
            "run file; set ASTRASERVE_DEBUG=1 to print the traceback")


def one_line(msg: str) -> str:
    """A multi-line message (e.g. several schema errors) joined into one line."""
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    if len(lines) == 1:
        return lines[0]
    head, rest = lines[0], lines[1:]
    if head.endswith("invalid configuration"):
        return f"{head.removesuffix('invalid configuration').rstrip()} " + "; ".join(rest)
    return head + " " + "; ".join(rest)
