"""What a result was measured on: the machine, the databases and every library's version.

Design decision: a figure without its machine is not worth keeping, so the suite records
these facts in the same file as the figures, read from the running system (``/proc``,
the database servers, installed package metadata) rather than typed in by hand.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "package_versions", "peer_versions", "postgres_facts"]

MAIN_PACKAGES = ("stepflow", "sqlalchemy", "psycopg", "anyio", "pydantic")
PEER_PACKAGES = (
    "dbos",
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
)


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision(folder: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}{' (with local changes)' if dirty else ''}"


def package_versions(names: tuple[str, ...] = MAIN_PACKAGES) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def peer_versions(python: str) -> dict[str, str | None]:
    """The peers' versions as the peer interpreter sees them."""
    code = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        f"print(json.dumps({{n: v(n) for n in {list(PEER_PACKAGES)!r}}}))"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        versions: dict[str, str | None] = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(PEER_PACKAGES)
    return versions


def postgres_facts(url: str) -> dict[str, Any] | None:
    """Server version and durability settings, or ``None`` when unreachable."""
    try:
        import psycopg
    except ImportError:
        return {"unreachable": "psycopg is not installed"}
    settings = ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return {name: _show(conn, name) for name in settings}
    except psycopg.Error as exc:
        text = str(exc).strip()
        return {"unreachable": text.splitlines()[0] if text else type(exc).__name__}


def _show(conn: Any, name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0]) if row else ""


def describe_machine(checkout: Path) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": _meminfo_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "executable": Path(sys.executable).name,
        "revision": _git_revision(checkout),
    }
