"""The JAX processes of a vectorised sweep ("lanes"), seen from the sweep's process: started with 'spawn'
and KERAS_BACKEND=jax, asked to check trials while the sweep plans (launch.plan_vectorised), then handed
their share of every group (launch.run_groups); worker.py is their side.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

from ..errors import ConfigError
from ..stopping import check as check_stop
from ..workers import STOP_GRACE_SECONDS  # a stopped child's time to record its trials as interrupted


class Lanes:
    """The JAX processes (worker.worker_main), started with 'spawn' and KERAS_BACKEND=jax."""

    def __init__(self, device: str, count: int):
        from ..workers import _environ
        from .worker import worker_main

        ctx = multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        for k in range(count):
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, os.getpid(), device), daemon=True,
                               name=f"expkit-vectorize-{k + 1}")
            with _environ({"KERAS_BACKEND": "jax"}):
                proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(conn)
        self.gpus: bool | None = None  # whether JAX sees a GPU there, once they have checked trials

    def check(self, trials: list, numbers: list[int], say) -> dict | None:
        """Every trial's pre-training checks (execute.preflight) and ModelShape, on JAX, the trials split
        over the processes: trial id -> ModelShape. Raises the ConfigError of the first trial (by
        `numbers`) that fails its checks; None when a process ended without answering."""
        n = len(self.conns)
        asked = []
        for k, conn in enumerate(self.conns):
            if trials[k::n]:
                conn.send(("check", trials[k::n], numbers[k::n]))
                asked.append(conn)
        shapes, errors = {}, []
        for conn in asked:
            reply = self._answer(conn, say)
            if reply is None or reply[0] != "checked":  # it ended, or failed otherwise ("finished", [])
                return None
            _, measured, error, self.gpus = reply
            shapes.update(measured or {})
            if error is not None:
                errors.append(error)
        if errors:
            _, message, file, path = min(errors, key=lambda e: e[0])
            raise ConfigError(message, file=file, path=path)
        return shapes

    def _answer(self, conn, say):
        """The next message from `conn` that is not a log line, or None when its process has ended."""
        while True:
            check_stop()
            if conn.poll(0.5):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return None
                if msg[0] == "log":
                    say(msg[1])
                    continue
                return msg
            if not self.procs[self.conns.index(conn)].is_alive() and not conn.poll():
                return None

    def keep(self, count: int) -> int:
        """Stop the processes beyond `count` (when fewer groups remain); returns how many are kept."""
        count = min(count, len(self.procs))
        self._stop(self.procs[count:], self.conns[count:])
        self.procs, self.conns = self.procs[:count], self.conns[:count]
        return count

    def cancel(self) -> None:
        self._stop(self.procs, self.conns)

    @staticmethod
    def _stop(procs, conns, grace: float = 0.0) -> None:
        """End the processes: those still running after `grace` seconds are sent SIGTERM."""
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc, conn in zip(procs, conns):
            proc.join(timeout=10)
            conn.close()

    def run(self, jobs: list[dict], datasets: dict, say) -> list[str]:
        """Hand each process its job and relay their lines until each reports the trials it finished."""
        try:
            sends = [threading.Thread(target=conn.send, args=(("job", job, datasets),), daemon=True)
                     for conn, job in zip(self.conns, jobs)]  # the datasets go to every process at once
            for send in sends:
                send.start()
            for send in sends:
                send.join()
            finished = self._listen(say)
        except KeyboardInterrupt:
            for proc in self.procs:
                proc.terminate()  # SIGTERM, once: each records its trials as interrupted
            try:
                self._listen(say, timeout=STOP_GRACE_SECONDS)
            finally:
                for proc in self.procs:
                    if proc.is_alive():
                        proc.kill()
            raise
        finally:
            self._stop(self.procs, self.conns, grace=10.0)  # each exits by itself once it has reported
        for proc in self.procs:
            if proc.exitcode not in (0, None):
                say(f"vectorize: a JAX process ended with exit status {proc.exitcode}; its unfinished trials run one "
                    "at a time")
        return finished

    def _listen(self, say, timeout: float | None = None) -> list[str]:
        from multiprocessing.connection import wait

        deadline = None if timeout is None else time.monotonic() + timeout
        open_conns, finished = list(self.conns), []
        while open_conns and (deadline is None or time.monotonic() < deadline):
            if deadline is None:  # waiting for the groups, not for their records after a stop
                check_stop()
            ready = wait(open_conns, timeout=0.5)
            if not ready and not any(p.is_alive() for p in self.procs):
                break
            for conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    open_conns.remove(conn)
                    continue
                if msg[0] == "log":
                    say(msg[1])
                elif msg[0] == "finished":
                    finished += msg[1]
                    open_conns.remove(conn)
        return finished
