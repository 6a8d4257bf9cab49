"""Prometheus /metrics: figures read from the database and the broker at scrape time."""
