"""Review follow-ups: checked and started by the coordinator, run by the workers."""
