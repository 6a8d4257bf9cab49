"""The agent's transcript: one JSON line per message, written as the run goes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.redact import Redactor


class Transcript:
    """Append-only and redacted, so a crash mid-run still leaves everything up to it."""

    def __init__(self, path: Path, redact: Redactor) -> None:
        self.path = path
        self.redact = redact
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, kind: str, **data: Any) -> None:
        entry = {"at": datetime.now(UTC).isoformat(), "kind": kind, **data}
        line = self.redact(json.dumps(entry, default=str))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
