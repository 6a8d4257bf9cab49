"""GitHub webhook intake: verify, deduplicate, route per (event, action), record the outcome."""
