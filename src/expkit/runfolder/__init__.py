"""The run folder contract: statuses, the results.json record, liveness, claims, and the readers.

This package owns every file of a run folder that records what happened (docs/run-folder.md):
`status.json`, `results.json`, `metrics.csv`, and a sweep's trial claims. Everyone else reads them
through `read_record`, `read_status` and `read_metrics`; nothing else parses them by their keys.

- `claims`: who holds a run or a sweep trial (`Holder`, `pid_alive`), the trial claims (`Claim`,
  `ClaimLost`) and the `Heartbeat` that keeps a holder alive
- `records`: the statuses, `RunRecord` (results.json), the `RunFolder` that writes a run's files,
  and the readers `read_record`, `read_status`, `read_metrics`
- `sweepfolder`: a sweep folder's manifest reader, claims folder, earlier attempts and lock
"""

from .claims import (CLAIM_FILL_SECONDS, DEFAULT_STALE_AFTER, HEARTBEAT_SECONDS, Claim, ClaimLost, Heartbeat, Holder,
                     now_iso, pid_alive)
from .records import (AVERAGED, DAMAGED, DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, PENDING, PRUNED, RUNNING, STATUSES, WRITTEN,
                      DamagedRecord, RunFolder, RunRecord, is_run_folder, metrics_csv_text, new_run_id, read_metrics,
                      read_record, read_status)
from .sweepfolder import (ATTEMPTS, CLAIMS, MANIFEST, is_sweep_folder, manifest_trials, read_manifest, set_aside,
                          sweep_lock)

__all__ = [
    "AVERAGED", "CLAIM_FILL_SECONDS", "DAMAGED", "DEFAULT_STALE_AFTER", "DIVERGED", "DONE", "FAILED", "FINISHED",
    "HEARTBEAT_SECONDS", "INTERRUPTED", "PENDING", "RUNNING", "STATUSES", "WRITTEN", "Claim", "ClaimLost",
    "DamagedRecord", "Heartbeat", "Holder", "RunFolder", "RunRecord", "is_run_folder", "metrics_csv_text",
    "new_run_id", "now_iso", "pid_alive", "PRUNED", "read_metrics", "read_record", "read_status",
    "ATTEMPTS", "CLAIMS", "MANIFEST", "is_sweep_folder", "manifest_trials", "read_manifest", "set_aside", "sweep_lock",
]
