"""Mount points that host-0 had to create on the host, counted so they can be removed."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path


class MountPoints:
    """Creates missing mount targets on the shared host filesystem and removes them when unused.

    Mounts happen inside each container's private mount namespace, but their targets must
    exist on the host. Every path created here is recorded in `record` (one per line), so
    that cleanup.sh can remove them even if the agent was killed.
    """

    def __init__(self, record: Path) -> None:
        self._record = record
        self._lock = threading.Lock()
        self._users: Counter[Path] = Counter()
        self._created: list[Path] = []

    def acquire(self, target: Path, is_file: bool) -> list[Path]:
        """Make sure target exists; return the paths to release when the container ends."""
        with self._lock:
            created: list[Path] = []
            missing = [
                p for p in [target, *target.parents] if not p.exists() and not p.is_symlink()
            ]
            for p in reversed(missing):
                if p == target and is_file:
                    p.touch()
                else:
                    p.mkdir()
                created.append(p)
            self._created.extend(created)
            self._save()
            used = [target, *target.parents]
            mine = [p for p in used if p in self._created]
            self._users.update(mine)
            return mine

    def release(self, paths: list[Path]) -> None:
        """Drop one use of each path and remove those nobody uses (deepest first)."""
        with self._lock:
            self._users.subtract(paths)
            for p in sorted(set(paths), key=lambda p: len(p.parts), reverse=True):
                if self._users[p] > 0:
                    continue
                del self._users[p]
                try:
                    p.unlink() if p.is_file() else p.rmdir()
                except OSError:
                    continue
                self._created.remove(p)
            self._save()

    def _save(self) -> None:
        self._record.write_text("".join(f"{p}\n" for p in self._created))
