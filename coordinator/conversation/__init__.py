"""Conversations on the forge: comment commands and mentions, parsed, checked and carried out."""
