"""Webhook intake, triage, dispatch, the REST API, the reconciler and the ops CLI."""
