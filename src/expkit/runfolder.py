"""The run folder: where one run's record lives. See docs/run-folder.md for the format."""

from __future__ import annotations

import csv
import io
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from .files import read_json, write_json_atomic, write_text_atomic, write_yaml_atomic

STATUSES = ("running", "done", "diverged", "failed", "interrupted")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunFolder:
    """One run's folder. Created exclusively: an existing folder is never reused."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.started = now_iso()

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> "RunFolder":
        """A new folder runs_dir/name/<run-id>; the id is fresh every time."""
        parent = Path(runs_dir) / name
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = parent / new_run_id()
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new run folder under {parent}")

    @classmethod
    def create_at(cls, path: str | Path) -> "RunFolder":
        """A new folder at exactly `path` (a sweep trial); fails if it exists."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def write_config(self, config: dict) -> None:
        write_yaml_atomic(self.path / "config.yaml", config)

    def write_summary(self, text: str) -> None:
        write_text_atomic(self.path / "summary.txt", text)

    def set_status(self, status: str) -> None:
        assert status in STATUSES, status
        record = {"status": status, "pid": os.getpid(), "started": self.started}
        if status != "running":
            record["ended"] = now_iso()
        write_json_atomic(self.path / "status.json", record)

    def write_metrics(self, rows: list[dict]) -> None:
        if not rows:
            return
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path / "metrics.csv", buf.getvalue())

    def write_results(self, results: dict) -> None:
        write_json_atomic(self.path / "results.json", results)

    def status(self) -> str | None:
        """The recorded status; a 'running' folder whose process is gone reads as 'interrupted'."""
        return read_status(self.path)


def read_status(path: Path) -> str | None:
    path = Path(path)
    if (path / "results.json").exists():
        return read_json(path / "results.json").get("status")
    if not (path / "status.json").exists():
        return None
    record = read_json(path / "status.json")
    if record.get("status") == "running" and not pid_alive(record.get("pid")):
        return "interrupted"
    return record.get("status")


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
