"""The state folder of single-host mode: database, broker data, workspaces, local forge, generated secrets.

One folder per user (never the current directory), so `forgecrew up`, `forgecrew status` and
`forgecrew tasks list` run from anywhere agree on where the state is, and a checkout of
some repository never collects a forgecrew.db by accident.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from common.errors import SettingsError

# A unix socket's path must fit in sockaddr_un.sun_path (108 bytes with its NUL on Linux).
MAX_SOCKET_PATH = 107


def default_home() -> Path:
    """$XDG_DATA_HOME/forgecrew, else ~/.local/share/forgecrew (the XDG base directory default)."""
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data) if data and os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "forgecrew"


class StateHome:
    """Where each piece of single-host state lives under FORGECREW_HOME."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()

    @property
    def database(self) -> Path:
        return self.root / "forgecrew.db"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def broker_socket(self) -> Path:
        return self.broker_dir / "broker.sock"

    @property
    def broker_url(self) -> str:
        return f"redis+socket://{self.broker_socket}"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def forge(self) -> Path:
        return self.root / "forge"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def flower_db(self) -> Path:
        return self.root / "flower" / "flower.db"

    def ensure(self) -> None:
        """Create the folders, closed to other users: the database and broker hold tokens' effects."""
        for folder in (self.root, self.broker_dir, self.secrets_dir, self.flower_db.parent):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
        if len(os.fsencode(self.broker_socket)) > MAX_SOCKET_PATH:
            raise SettingsError(f"FORGECREW_HOME={self.root} is too long for the broker's unix socket "
                                f"({self.broker_socket}); choose a shorter folder")

    def stored_secret(self, name: str) -> str | None:
        """A secret generated earlier, if any (read by every command, so they agree with `up`)."""
        path = self.secrets_dir / name
        try:
            value = path.read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        return value or None

    def generated_secret(self, name: str) -> str:
        """The secret stored under `name`, made now (mode 600) when there is none yet."""
        existing = self.stored_secret(name)
        if existing:
            return existing
        self.ensure()
        value = secrets.token_hex(32)
        path = self.secrets_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
        return value
