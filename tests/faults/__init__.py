"""Fault injection: real processes killed at the worst moments, and what the system promises then."""
