"""Hostile input: Hypothesis properties and schemathesis runs over what forgecrew reads from outside."""
