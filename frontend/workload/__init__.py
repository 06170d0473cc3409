"""Sources of work: synthetic generators, JSONL replay, agent programs."""
