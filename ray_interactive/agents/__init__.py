"""AI agents that steer a run through the command API (issue 12, under way)."""
