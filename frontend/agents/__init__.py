"""Agent programs: DAGs of turns with tool gaps, their generators, tool simulator and orchestrator."""
