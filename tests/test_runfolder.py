"""The run folder contract: records, statuses, liveness and trial claims, on real files and real processes."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expkit.runfolder import (AVERAGED, DAMAGED, DONE, FINISHED, INTERRUPTED, PENDING, RUNNING, STATUSES, Claim, ClaimLost,
                              DamagedRecord, Heartbeat, Holder, RunFolder, RunRecord, pid_alive, read_metrics,
                              read_record, read_status)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
OTHER_HOST = "another-host.invalid"
TRIAL = "a1b2c3d4e5"


@pytest.fixture(scope="module")
def dead_holder() -> dict:
    """The Holder of a real process that has since exited (host, pid and pid start time as it recorded them)."""
    out = subprocess.run(
        [sys.executable, "-c", "import json, dataclasses; from expkit.runfolder import Holder; "
                               "print(json.dumps(dataclasses.asdict(Holder.this_process())))"],
        env=ENV, capture_output=True, text=True, check=True)
    holder = json.loads(out.stdout)
    assert holder["host"] == socket.gethostname() and holder["pid"] != os.getpid()
    assert not pid_alive(holder["pid"], holder["pid_start"])
    return holder


def other_host(heartbeat: float) -> dict:
    return {"host": OTHER_HOST, "pid": 4242, "pid_start": "123", "started": "2024-01-01T00:00:00+00:00",
            "heartbeat": heartbeat}


def write_status(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps(data))
    return folder


def write_claim(claims: Path, generation: int, holder: dict, trial: str = TRIAL) -> Path:
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{trial}.{generation}.json"
    path.write_text(json.dumps({**holder, "token": "feedfacefeedface", "trial": trial}))
    return path


def claim_files(claims: Path) -> list[str]:
    return sorted(p.name for p in claims.iterdir())


HISTORY = [
    {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4},
    {"epoch": 2, "loss": 0.8, "accuracy": 0.7, "val_loss": 0.9, "val_accuracy": 0.6},
    {"epoch": 3, "loss": float("nan"), "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": float("nan")},
]


# --- the vocabulary and the record ----------------------------------------------------------------


def test_status_vocabulary():
    assert STATUSES == ("pending", "running", "done", "diverged", "pruned", "failed", "interrupted", "damaged")
    assert FINISHED == ("done", "diverged", "pruned") and AVERAGED == ("done", "diverged")
    assert RunRecord("a", "r", status="diverged").finished and RunRecord("a", "r", status="done").finished
    assert RunRecord("a", "r", status="pruned").finished  # stopped by sweep.prune: never retrained
    assert not RunRecord("a", "r", status="failed").finished and not RunRecord("a", "r").finished


def test_record_round_trip_keeps_unknown_keys():
    data = {"name": "cnn", "run_id": "20240101-000000-abcd", "status": "done", "seed": 7, "params": 1091,
            "best": {"accuracy": 0.9, "val_accuracy": 0.8, "loss": 0.3, "val_loss": 0.4},
            "final": {"accuracy": 0.85},
            "trial": {"id": "t1", "values": {"train.learning_rate": 0.1}, "seed": 7},
            "future_field": {"nested": [1, 2]}, "written_by": "expkit 9.9"}
    record = RunRecord.from_dict(data)
    assert record.name == "cnn" and record.seed == 7 and record.params == 1091 and record.status == DONE
    assert record.extra == {"future_field": {"nested": [1, 2]}, "written_by": "expkit 9.9"}
    assert record.trial == {"id": "t1", "values": {"train.learning_rate": 0.1}, "seed": 7}
    # a partial metrics block is completed with NaN, never a missing key
    assert record.final["accuracy"] == 0.85
    assert all(math.isnan(record.final[k]) for k in ("val_accuracy", "loss", "val_loss"))

    out = record.to_dict()
    assert "extra" not in out
    assert out["future_field"] == {"nested": [1, 2]} and out["written_by"] == "expkit 9.9"
    assert out["best"] == data["best"] and out["trial"] == data["trial"] and out["params"] == 1091
    assert RunRecord.from_dict(out).to_dict().keys() == out.keys()

    # a single run has no trial: the key is left out, not written as null
    assert "trial" not in RunRecord("single", "r").to_dict()


def test_record_through_the_folder_keeps_nan_and_extra(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    record = RunRecord.from_dict({"name": "x", "run_id": folder.run_id, "status": "diverged", "kept": 3})
    record.summarise(HISTORY, n_train=10)
    folder.write_record(record)
    text = (folder.path / "results.json").read_text()
    assert "NaN" in text and '"kept": 3' in text

    back = read_record(folder.path)
    assert back.status == "diverged" and back.extra == {"kept": 3}
    assert back.best == {"accuracy": 0.7, "val_accuracy": 0.6, "loss": 0.8, "val_loss": 0.9}
    assert back.final["accuracy"] == 0.6 and back.final["val_loss"] == 1.0
    assert math.isnan(back.final["loss"]) and math.isnan(back.final["val_accuracy"])
    # the untouched record of a run that never trained: every metric NaN, all the way through JSON
    folder.write_record(RunRecord("x", folder.run_id, status="failed"))
    back = read_record(folder.path)
    assert set(back.best) == {"accuracy", "val_accuracy", "loss", "val_loss"}
    assert all(math.isnan(v) for v in [*back.best.values(), *back.final.values()])


def test_summarise():
    record = RunRecord("x", "r", n_train=100, fit_seconds=2.0)
    record.summarise(HISTORY)
    # best skips NaN: max of accuracies, min of losses
    assert record.best == {"accuracy": 0.7, "val_accuracy": 0.6, "loss": 0.8, "val_loss": 0.9}
    assert record.final["accuracy"] == 0.6 and record.final["val_loss"] == 1.0
    assert math.isnan(record.final["loss"]) and math.isnan(record.final["val_accuracy"])
    assert record.epochs_run == 3
    assert record.samples_per_second == 150.0  # 100 samples * 3 epochs / 2 s

    record.summarise(HISTORY[:2], n_train=30)  # an explicit n_train wins over the record's
    assert record.epochs_run == 2 and record.samples_per_second == 30.0
    assert record.final["loss"] == 0.8

    unmeasured = RunRecord("x", "r", n_train=100, fit_seconds=0.0)
    unmeasured.summarise([])
    assert unmeasured.epochs_run == 0 and unmeasured.samples_per_second is None
    assert all(math.isnan(v) for v in [*unmeasured.best.values(), *unmeasured.final.values()])


# --- read_status --------------------------------------------------------------------------------------


def test_status_pending_before_anything_is_written(tmp_path):
    assert read_status(tmp_path / "nothing-here") == PENDING
    (tmp_path / "empty").mkdir()
    assert read_status(tmp_path / "empty") == PENDING
    # a claimer's temporary (a dot file) does not make the folder a record
    (tmp_path / "empty" / ".status.json.1234.tmp").write_text("{")
    assert read_status(tmp_path / "empty") == PENDING
    # but a folder holding something that is no record at all is not silently "pending"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("hello")
    assert read_status(tmp_path / "odd") == DAMAGED


def test_status_running_while_this_process_holds_it(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.set_status(RUNNING)
    data = json.loads((folder.path / "status.json").read_text())
    assert data["status"] == "running" and data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert "ended" not in data
    assert read_status(folder.path) == RUNNING

    folder.set_status(DONE)
    data = json.loads((folder.path / "status.json").read_text())
    assert data["status"] == "done" and data["ended"]
    assert read_status(folder.path) == DONE
    with pytest.raises(ValueError, match="pending"):
        folder.set_status(PENDING)


def test_status_running_with_a_dead_pid_is_interrupted(tmp_path, dead_holder):
    folder = write_status(tmp_path / "run", {"status": "running", **dead_holder})
    assert read_status(folder) == INTERRUPTED
    # a finished status from a dead process is just that status
    write_status(folder, {"status": "done", **dead_holder})
    assert read_status(folder) == DONE


def test_status_from_another_host_follows_its_heartbeat(tmp_path):
    fresh = write_status(tmp_path / "fresh", {"status": "running", **other_host(time.time())})
    assert read_status(fresh) == RUNNING
    old = write_status(tmp_path / "old", {"status": "running", **other_host(time.time() - 120)})
    assert read_status(old, stale_after=60) == INTERRUPTED
    assert read_status(old, stale_after=600) == RUNNING


def test_legacy_status_without_host(tmp_path, dead_holder):
    dead = write_status(tmp_path / "dead", {"status": "running", "pid": dead_holder["pid"]})
    assert read_status(dead) == INTERRUPTED
    alive = write_status(tmp_path / "alive", {"status": "running", "pid": os.getpid()})
    assert read_status(alive) == RUNNING
    no_pid = write_status(tmp_path / "no-pid", {"status": "running"})
    assert read_status(no_pid) == INTERRUPTED


def test_damaged_records_read_as_damaged(tmp_path):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    full = json.dumps(RunRecord("x", "r", status="done").to_dict(), allow_nan=True)
    (truncated / "results.json").write_text(full[: len(full) // 2])
    assert read_status(truncated) == DAMAGED
    with pytest.raises(DamagedRecord, match="malformed JSON") as info:
        read_record(truncated)
    assert info.value.file == str(truncated / "results.json")
    assert str(truncated / "results.json") in str(info.value)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "results.json").write_text(json.dumps({"name": "x", "run_id": "r", "status": "exploded"}))
    assert read_status(unknown) == DAMAGED
    assert read_record(unknown).status == "exploded"  # the reader reports; read_status judges

    for name, text in [("list", "[1, 2]"), ("pending", json.dumps({"status": "pending"}))]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(text)
        assert read_status(folder) == DAMAGED, name

    bad_status = write_status(tmp_path / "bad-status", {"status": "running", "host": "h"})
    (bad_status / "status.json").write_bytes(b"\xff\xfe\x00\x01")
    assert read_status(bad_status) == DAMAGED


def test_read_metrics(tmp_path):
    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.csv").write_text("epoch,loss,accuracy\n1,0.5,0.8\n2,nan,0.9\n")
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and isinstance(rows[0]["epoch"], int)
    assert rows[0]["loss"] == 0.5 and math.isnan(rows[1]["loss"]) and rows[1]["accuracy"] == 0.9

    (tmp_path / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DamagedRecord) as info:
        read_metrics(tmp_path)
    assert info.value.file == str(tmp_path / "metrics.csv")

    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.5,0.7\n")
    with pytest.raises(DamagedRecord, match="row 1 does not fit the header"):
        read_metrics(tmp_path)


# --- liveness -----------------------------------------------------------------------------------------


def test_recycled_pid_is_not_the_original_holder():
    me = Holder.this_process()
    assert me.pid == os.getpid() and me.pid_start is not None and me.alive()
    recycled = Holder(me.host, os.getpid(), "1", me.started, time.time())  # same pid, another start time
    assert not recycled.alive()
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), me.pid_start)
    assert not pid_alive(os.getpid(), "1")
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive("123")


def test_holder_from_dict_rejects_incomplete_data():
    assert Holder.from_dict({"pid": 1}) is None
    assert Holder.from_dict({"host": "h", "pid": "not a pid"}) is None
    holder = Holder.from_dict({"host": "h", "pid": "12", "heartbeat": "1.5"})
    assert (holder.host, holder.pid, holder.pid_start, holder.heartbeat) == ("h", 12, None, 1.5)


# --- claims -------------------------------------------------------------------------------------------


def test_claim_fresh_trial_is_generation_one(tmp_path):
    claims = tmp_path / ".claims"
    claim = Claim.acquire(claims, TRIAL)
    assert claim is not None and claim.path == claims / f"{TRIAL}.1.json"
    data = json.loads(claim.path.read_text())
    assert data["host"] == socket.gethostname() and data["pid"] == os.getpid()
    assert data["token"] == claim.token and len(claim.token) == 16 and data["trial"] == TRIAL
    assert claim.held()
    # the same live process holds it: a second acquire is refused and changes nothing
    assert Claim.acquire(claims, TRIAL) is None
    assert claim_files(claims) == [f"{TRIAL}.1.json"]
    # another trial is independent
    other = Claim.acquire(claims, "ffff000011")
    assert other is not None and other.path.name == "ffff000011.1.json" and claim.held()

    claim.release()
    assert not claim.path.exists() and not claim.held()
    again = Claim.acquire(claims, TRIAL)
    assert again is not None and again.path.name == f"{TRIAL}.1.json" and again.token != claim.token


def test_claim_of_a_dead_holder_is_taken_over(tmp_path, dead_holder):
    claims = tmp_path / ".claims"
    stale = write_claim(claims, 1, dead_holder)
    claim = Claim.acquire(claims, TRIAL)
    assert claim is not None and claim.path.name == f"{TRIAL}.2.json"
    assert not stale.exists() and claim_files(claims) == [f"{TRIAL}.2.json"]
    assert json.loads(claim.path.read_text())["pid"] == os.getpid()


def test_claim_from_another_host_follows_its_heartbeat(tmp_path):
    claims = tmp_path / ".claims"
    write_claim(claims, 3, other_host(time.time()))
    assert Claim.acquire(claims, TRIAL, stale_after=60) is None  # alive elsewhere

    write_claim(claims, 3, other_host(time.time() - 120))
    assert Claim.acquire(claims, TRIAL, stale_after=600) is None  # not yet stale at 600 s
    claim = Claim.acquire(claims, TRIAL, stale_after=60)
    assert claim is not None and claim.path.name == f"{TRIAL}.4.json"
    assert claim_files(claims) == [f"{TRIAL}.4.json"]


def test_claim_file_naming_no_holder_is_taken_over(tmp_path):
    claims = tmp_path / ".claims"
    claims.mkdir()
    (claims / f"{TRIAL}.1.json").write_text(json.dumps({"token": "x", "trial": TRIAL}))
    claim = Claim.acquire(claims, TRIAL)
    assert claim is not None and claim.path.name == f"{TRIAL}.2.json"
    assert claim_files(claims) == [f"{TRIAL}.2.json"]


def test_empty_claim_file_left_long_ago_is_taken_over(tmp_path):
    claims = tmp_path / ".claims"
    claims.mkdir()
    empty = claims / f"{TRIAL}.1.json"
    empty.write_bytes(b"")
    an_hour_ago = time.time() - 3600
    os.utime(empty, (an_hour_ago, an_hour_ago))
    claim = Claim.acquire(claims, TRIAL, stale_after=60)
    assert claim is not None and claim.path.name == f"{TRIAL}.2.json"


def test_an_empty_claim_file_just_created_counts_as_held(tmp_path):
    """Between a claimer's O_EXCL create and its write, the file is empty: that claim is live."""
    claims = tmp_path / ".claims"
    claims.mkdir()
    (claims / f"{TRIAL}.1.json").write_bytes(b"")
    assert Claim.acquire(claims, TRIAL, stale_after=60) is None


def test_superseded_claim_is_lost(tmp_path):
    claims = tmp_path / ".claims"
    mine = Claim.acquire(claims, TRIAL)
    assert mine.held()
    mine.beat()  # while held, a beat just refreshes
    # another process took over (as after our heartbeat went stale): a higher generation exists
    write_claim(claims, 2, other_host(time.time()))
    assert mine.path.exists() and not mine.held()
    before = mine.path.read_text()
    with pytest.raises(ClaimLost, match="claimed by another process"):
        mine.beat()
    assert mine.path.read_text() == before  # the lost claim's file is not refreshed
    mine.release()  # releasing a lost claim does not touch the new holder's file
    assert (claims / f"{TRIAL}.2.json").exists()


def test_takeover_after_a_stale_heartbeat_makes_the_old_claim_lost(tmp_path):
    claims = tmp_path / ".claims"
    first = Claim.acquire(claims, TRIAL)
    # its heartbeat, as another host would have written it, goes silent past stale_after
    write_claim(claims, 1, other_host(time.time() - 120))
    second = Claim.acquire(claims, TRIAL, stale_after=60)
    assert second is not None and second.path.name == f"{TRIAL}.2.json"
    assert not first.held() and second.held()
    with pytest.raises(ClaimLost):
        first.beat()
    assert claim_files(claims) == [f"{TRIAL}.2.json"]  # the lost holder wrote nothing back


def test_run_folder_stops_writing_once_its_claim_is_lost(tmp_path):
    claims = tmp_path / ".claims"
    claim = Claim.acquire(claims, TRIAL)
    folder = RunFolder(tmp_path / TRIAL, claim)
    folder.path.mkdir()
    folder.set_status(RUNNING)
    folder.write_metrics([{"epoch": 1, "loss": 0.5}])
    folder.beat()
    assert (folder.path / "metrics.csv").read_text() == "epoch,loss\n1,0.5\n"

    write_claim(claims, 2, other_host(time.time()))
    before = {p.name: p.read_bytes() for p in folder.path.iterdir()}
    with pytest.raises(ClaimLost, match=str(folder.path)):
        folder.write_metrics([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}])
    for write in (lambda: folder.write_record(folder.new_record("x", status="done")),
                  lambda: folder.set_status(DONE), folder.beat,
                  lambda: folder.write_config({"name": "x"}), lambda: folder.write_summary("text")):
        with pytest.raises(ClaimLost):
            write()
    # not a byte changed, and no temporary left behind
    assert {p.name: p.read_bytes() for p in folder.path.iterdir()} == before


CLAIMER = """
import sys, time
from pathlib import Path
from expkit.runfolder import Claim
claims, trial, ready, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
claim = Claim.acquire(claims, trial)
print("got" if claim is not None else "none", claim.path.name if claim is not None else "", flush=True)
time.sleep(2)  # hold it while the others look
"""


def race(tmp_path: Path, claims: Path, n: int = 8) -> list[str]:
    """n real processes acquire the same trial at the same moment; their printed outcomes."""
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(claims), TRIAL, str(gate / f"ready{i}"),
                               str(gate / "go")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(n)]
    try:
        deadline = time.time() + 60
        while len(list(gate.glob("ready*"))) < n:
            assert time.time() < deadline, "claimers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        (gate / "go").touch()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in outs]
    return [out.strip() for out, _ in outs]


def test_exactly_one_of_eight_processes_gets_a_fresh_claim(tmp_path):
    claims = tmp_path / ".claims"
    results = race(tmp_path, claims)
    assert sorted(results) == [f"got {TRIAL}.1.json"] + ["none"] * 7
    # every racer has exited: the winner's claim is stale and the next acquire takes it over
    assert claim_files(claims) == [f"{TRIAL}.1.json"]
    claim = Claim.acquire(claims, TRIAL)
    assert claim is not None and claim.path.name == f"{TRIAL}.2.json"
    assert claim_files(claims) == [f"{TRIAL}.2.json"]


def test_exactly_one_of_eight_processes_takes_over_a_stale_claim(tmp_path, dead_holder):
    claims = tmp_path / ".claims"
    write_claim(claims, 1, dead_holder)
    results = race(tmp_path, claims)
    assert sorted(results) == [f"got {TRIAL}.2.json"] + ["none"] * 7
    assert claim_files(claims) == [f"{TRIAL}.2.json"]


# --- the heartbeat thread -----------------------------------------------------------------------------


def heartbeat_value(claim: Claim) -> float:
    return json.loads(claim.path.read_text())["heartbeat"]


def test_heartbeat_refreshes_the_claim_and_stops_on_exit(tmp_path):
    claim = Claim.acquire(tmp_path / ".claims", TRIAL)
    first = heartbeat_value(claim)
    with Heartbeat(claim.beat, seconds=0.05) as beat:
        time.sleep(0.3)
        second = heartbeat_value(claim)
        time.sleep(0.3)
        third = heartbeat_value(claim)
        assert beat._thread.is_alive()
    assert first < second < third
    assert json.loads(claim.path.read_text())["token"] == claim.token  # the beat keeps the claim's identity
    assert not beat._thread.is_alive()
    stopped = heartbeat_value(claim)
    time.sleep(0.3)
    assert heartbeat_value(claim) == stopped


def test_heartbeat_thread_ends_when_the_claim_is_lost(tmp_path):
    claims = tmp_path / ".claims"
    claim = Claim.acquire(claims, TRIAL)
    with Heartbeat(claim.beat, seconds=0.05) as beat:
        write_claim(claims, 2, other_host(time.time()))
        deadline = time.time() + 5
        while beat._thread.is_alive() and time.time() < deadline:
            time.sleep(0.02)
        assert not beat._thread.is_alive()  # ClaimLost ended it, without raising into the caller
    assert not claim.held()


def test_a_zombie_holder_is_not_alive():
    """A holder that exited but was not reaped yet (its parent has not waited) holds nothing."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(f"/proc/{proc.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    try:
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()
