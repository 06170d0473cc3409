"""Studies over many runs: sweeps (frontend/study/sweep.py), SLOs and goodput (slo.py), capacity search
(capacity.py). Nothing here is imported at `astraserve` start-up; the commands import it lazily."""
