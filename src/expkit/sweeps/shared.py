"""Datasets handed to the sweep's worker processes on this machine in shared memory.

A vectorised group's process needs the dataset the sweep's process has loaded (to judge the group).
Pickled through the pipe, Fashion-MNIST (188 MB as float32) costs about 0.7 s to pickle and as much to
unpickle per process on the 2-core CPU, on the cores the processes are starting on. Instead the arrays
are copied once into one block of shared memory (`multiprocessing.shared_memory`); what travels is the
block's name and the arrays' places in it, and each process maps the same pages, read-only.

The sweep's process owns each block and unlinks it when its workers are done (`SharedDatasets.close`);
multiprocessing's resource tracker, which the spawned workers share with it, unlinks whatever is left
if the sweep's process dies first. Where the shared-memory file system has no room for a dataset (a
container's /dev/shm is 64 MB unless set larger, and writing past it kills the process with SIGBUS), the
dataset goes through the pipe as before.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

ALIGN = 64  # each array starts on a cache line
SHM_ROOT = "/dev/shm"  # where Linux keeps POSIX shared memory


@dataclass(frozen=True)
class SharedDataset:
    """What travels instead of a dataset: its block's name and each array's (field, offset, shape, dtype)."""

    block: str
    arrays: tuple
    rest: object        # the dataset with every array field set to None (class names and the like)
    files: list         # the files it was read from (the record's data hash)

    def open(self) -> tuple:
        """(the dataset, its files), its arrays read-only views of the shared block, mapped for the
        rest of this process's life (a vectorised group keeps them until it ends)."""
        import numpy as np
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(name=self.block)
        _MAPPED.append(shm)  # closing it while the arrays view it would fail; the process's exit unmaps it
        arrays = {}
        for name, offset, shape, dtype in self.arrays:
            array = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)
            array.flags.writeable = False  # another process reads the same pages
            arrays[name] = array
        return replace(self.rest, **arrays), list(self.files)


_MAPPED: list = []  # the blocks this process has opened


def shm_room() -> float:
    """Bytes free for shared memory here (0 where there is no /dev/shm to ask)."""
    import os

    try:
        st = os.statvfs(SHM_ROOT)
    except (OSError, AttributeError):
        return 0.0
    return float(st.f_bavail) * st.f_frsize


def _array_fields(dataset) -> list[str]:
    import numpy as np

    return [f.name for f in fields(dataset) if isinstance(getattr(dataset, f.name), np.ndarray)]


class SharedDatasets:
    """The blocks the sweep's process has made, one per dataset, made on first use and unlinked by close()."""

    def __init__(self):
        self._made: dict[int, tuple] = {}   # id(dataset) -> (dataset, SharedMemory, SharedDataset)

    def share(self, loaded: tuple):
        """The handle of (dataset, files) in shared memory, copying the arrays in the first time; `loaded`
        itself when shared memory has no room for it (it then travels pickled)."""
        import numpy as np
        from multiprocessing import shared_memory

        dataset, files = loaded
        if id(dataset) in self._made and self._made[id(dataset)][0] is dataset:
            return self._made[id(dataset)][2]
        names = _array_fields(dataset)
        places, size = [], 0
        for name in names:
            array = np.ascontiguousarray(getattr(dataset, name))
            places.append((name, size, array.shape, array.dtype.str))
            size += -(-array.nbytes // ALIGN) * ALIGN
        if shm_room() < 1.25 * size:
            return loaded
        shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
        try:
            for name, offset, shape, dtype in places:
                view = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)
                view[...] = getattr(dataset, name)
                del view
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        handle = SharedDataset(shm.name, tuple(places), replace(dataset, **{n: None for n in names}), list(files))
        self._made[id(dataset)] = (dataset, shm, handle)
        return handle

    def close(self) -> None:
        """Unlink every block (processes that mapped one keep their pages until they exit)."""
        for _, shm, _ in self._made.values():
            try:
                shm.close()
                shm.unlink()
            except (OSError, BufferError):
                pass
        self._made.clear()


def open_handed_over(datasets: dict | None) -> dict | None:
    """A unit's datasets as the worker uses them: shared handles opened, anything else as it came."""
    if not datasets:
        return datasets
    return {k: (v.open() if isinstance(v, SharedDataset) else v) for k, v in datasets.items()}
