"""Flow-matching schedules and samplers (ODE now; the Flow-GRPO SDE with log-probs joins them)."""
