"""Who holds a run folder or a sweep trial's claim, and whether that holder is still alive.

A holder is a process (host, pid with its kernel start time, heartbeat). A sweep trial is claimed
through `<sweep>/.claims/<trial-id>.<generation>.json` files, so exactly one process trains it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..files import write_json_atomic

# A claim or run from another host counts as abandoned when its heartbeat is older than this.
DEFAULT_STALE_AFTER = float(os.environ.get("EXPKIT_STALE_AFTER", 600))
HEARTBEAT_SECONDS = 30.0
# A claim file is created empty (O_EXCL) and filled at once; one still empty after this was abandoned.
CLAIM_FILL_SECONDS = 30.0


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- liveness: who holds a run or a claim, and whether it is still there ----------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux): state first, start time 20th."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid`, so a recycled pid is not taken for the original."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid, start: str | None = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: gone all the same
        return False
    return start is None or _process_start(pid) in (None, start)


@dataclass
class Holder:
    """The process holding a run or a claim: host, pid (with its start time), heartbeat."""

    host: str
    pid: int
    pid_start: str | None
    started: str
    heartbeat: float  # seconds since the epoch

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), now_iso(), time.time())

    @classmethod
    def from_dict(cls, data: dict) -> "Holder | None":
        try:
            return cls(str(data["host"]), int(data["pid"]), data.get("pid_start"), str(data.get("started", "")),
                       float(data.get("heartbeat", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self, stale_after: float = DEFAULT_STALE_AFTER) -> bool:
        """Same host: its process exists. Another host: its heartbeat is younger than `stale_after`."""
        if self.host == socket.gethostname():
            return pid_alive(self.pid, self.pid_start)
        return time.time() - self.heartbeat < stale_after


def _legacy_holder(data: dict) -> Holder | None:
    """status.json of folders written before hosts were recorded: a pid on this host."""
    holder = Holder.from_dict(data)
    if holder is None and isinstance(data.get("pid"), int):
        holder = Holder(socket.gethostname(), data["pid"], None, str(data.get("started", "")), 0.0)
    return holder


# --- claims: exactly one process trains a sweep trial ---------------------------------------------


class ClaimLost(RuntimeError):
    """Another process took over this trial (our heartbeat went stale): stop writing at once."""


class Claim:
    """An exclusive claim on a sweep trial: `<sweep>/.claims/<trial-id>.<generation>.json`.

    Files are created with O_EXCL, so of two processes creating the same generation exactly one
    succeeds. The highest generation is the current claim; a stale one (its holder is dead on this
    host, or silent past `stale_after` on another) is taken over by creating the next generation,
    which cannot take a live claim by mistake: a racer that read the same stale generation fails
    to create the same next one.
    """

    def __init__(self, path: Path, holder: Holder, token: str):
        self.path = path
        self.holder = holder
        self.token = token

    @staticmethod
    def _generations(claims_dir: Path, trial_id: str) -> list[int]:
        out = []
        for p in claims_dir.glob(f"{trial_id}.*.json"):
            gen = p.name[len(trial_id) + 1:-len(".json")]
            if gen.isdigit():
                out.append(int(gen))
        return sorted(out)

    @classmethod
    def current_holder(cls, claims_dir: Path, trial_id: str) -> Holder | None:
        gens = cls._generations(claims_dir, trial_id)
        if not gens:
            return None
        path = claims_dir / f"{trial_id}.{gens[-1]}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            # Created (O_EXCL) but not filled yet: held for a moment. Left empty long ago (its
            # claimer died between create and write): nobody's.
            try:
                fresh = time.time() - path.stat().st_mtime < CLAIM_FILL_SECONDS
            except OSError:
                fresh = False
            return Holder(socket.gethostname(), os.getpid(), None, now_iso(), time.time()) if fresh else None
        return Holder.from_dict(data) if isinstance(data, dict) else None

    @classmethod
    def acquire(cls, claims_dir: Path, trial_id: str, stale_after: float = DEFAULT_STALE_AFTER) -> "Claim | None":
        """The claim on `trial_id`, or None when a live process holds it."""
        claims_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            gens = cls._generations(claims_dir, trial_id)
            if gens:
                holder = cls.current_holder(claims_dir, trial_id)
                if holder is not None and holder.alive(stale_after):
                    return None
            gen = gens[-1] + 1 if gens else 1
            path = claims_dir / f"{trial_id}.{gen}.json"
            holder = Holder.this_process()
            token = secrets.token_hex(8)
            data = json.dumps({**asdict(holder), "token": token, "trial": trial_id}).encode()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # a racer took this generation: look again
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            for old in gens:  # superseded generations: their holders are gone
                (claims_dir / f"{trial_id}.{old}.json").unlink(missing_ok=True)
            return cls(path, holder, token)
        return None

    def held(self) -> bool:
        """True while no later generation has superseded this claim."""
        trial_id, gen = self.path.name[:-len(".json")].rsplit(".", 1)
        gens = self._generations(self.path.parent, trial_id)
        return bool(gens) and gens[-1] == int(gen) and self.path.exists()

    def beat(self) -> None:
        lost = ClaimLost(f"{self.path}: this trial was claimed by another process")
        if not self.held():
            raise lost
        self.holder.heartbeat = time.time()
        write_json_atomic(self.path, {**asdict(self.holder), "token": self.token,
                                      "trial": self.path.name.rsplit(".", 2)[0]})
        if not self.held():  # superseded while writing: do not leave our old generation behind
            self.path.unlink(missing_ok=True)
            raise lost

    def release(self) -> None:
        if self.held():
            self.path.unlink(missing_ok=True)


class Heartbeat:
    """Calls `beat` every `seconds` in a daemon thread, so a long epoch still shows its holder alive."""

    def __init__(self, beat, seconds: float = HEARTBEAT_SECONDS):
        self._beat = beat
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="expkit-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._beat()
            except Exception:  # a lost claim is noticed by the next write; the thread just ends
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
