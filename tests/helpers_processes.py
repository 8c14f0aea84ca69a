"""Processes of a test's subprocess session, for the kill tests (tests/test_kill.py, tests/training)."""

from __future__ import annotations

from pathlib import Path


def session_processes(session_id: int) -> list[int]:
    """Running (non-zombie) processes of a session, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session_id:
            found.append(int(stat.parent.name))
    return found
