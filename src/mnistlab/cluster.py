"""The study's runs on a Dask cluster: `mnistlab compare --cluster tcp://HOST:8786`.

The study's process is a Dask client. It submits each run through Dask's concurrent.futures
executor; a worker trains the run in a temporary directory and, after every epoch, sends the
run's files (checkpoint, config.json, metrics.csv) back over a Dask queue, with the start and
end of the run. The client writes them into the study's run directory, so the run directories
live with the study as they do without a cluster: Ctrl-C keeps every finished epoch, and the
same command resumes, from any machine, by sending each unfinished run's checkpoint to a worker.

Each worker loads the dataset from its own data directory ($MNISTLAB_DATA, or ./data where it
was started), verified by the pinned checksums; it never downloads it. Before the study starts,
every worker is checked: the same mnistlab and torch versions as the study's, and the dataset
there; a worker that joins later is checked by the runs it takes. A worker process that dies
loses its run, and Dask starts the run again on another worker; its numbers are the same,
since a run is determined by its configuration and the thread count (`threads`).

Dask (the `cluster` extra) is imported only by the functions that need it: it is a heavy
optional dependency that nothing else in mnistlab uses.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, wait
from contextlib import contextmanager
from pathlib import Path

import torch

from mnistlab import __version__, data
from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mnistlab.config import TrainConfig
from mnistlab.errors import UserError
from mnistlab.fileio import atomic_write, interrupts_held, signal_handler
from mnistlab.predictions import PREDICTIONS_NAME
from mnistlab.study import train_unit

INSTALL = "pip install 'mnistlab[cluster]'"
CONNECT_SECONDS = 5.0  # for the scheduler to answer; a wrong address fails within this
RUN_FILES = (CHECKPOINT_NAME, "config.json", "metrics.csv")  # a run directory's files, in the order fit writes them


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(f"--cluster needs Dask, which is not installed here: {INSTALL}") from None
    return distributed


class Cluster:
    """A connection to a Dask scheduler whose workers train the study's runs, `threads` torch threads each."""

    def __init__(self, address: str, client, threads: int, workers: dict):
        self.address, self.client, self.threads, self.workers = address, client, threads, workers

    def describe(self) -> dict:
        """What results.json's "machine" says of the cluster (it describes the client's machine otherwise)."""
        n = len(self.workers)
        return {
            "cpu": f"{n} Dask worker{'' if n == 1 else 's'} at {self.address}",
            "cluster": self.address,
            "workers_at_start": sorted(info.get("name") or a for a, info in self.workers.items()),
            "threads_per_run": self.threads,
        }

    def close(self) -> None:
        """Leave the cluster; its scheduler and workers go on running."""
        self.client.close(timeout=CONNECT_SECONDS)

    def execute(self, units: list[list], progress) -> Iterator[tuple[int, list[dict], float]]:
        """Yield (index, metrics, seconds) as the runs of `units` finish on the workers.

        `units` are study.work_units': one run, or an arm's seeds trained stacked, each unit a task
        of (index, TrainConfig, run directory, epochs finished) as in study.execute. A worker trains a
        unit as the local pool does (study.train_unit), so the numbers are the local study's.
        Ctrl-C, a failed run or a caller that stops early cancels every unit, going or queued (a
        worker stops at the end of the epoch going), writes the epochs that arrived, and
        raises; a second Ctrl-C exits at once.
        """
        from distributed import Queue

        if not units:
            return
        todo = [task for unit in units for task in unit]
        events = Queue(f"mnistlab-study-{uuid.uuid4().hex}", client=self.client)
        relay = Relay(
            events, {i: run_dir for i, _, run_dir, _ in todo}, {i: n for i, *_, n in todo}, progress, self.address
        )
        executor = self.client.get_executor(pure=False)
        versions = own_versions()
        futures = {}
        try:
            for unit in units:  # longest first: Dask starts them in this order
                runs = [
                    (i, config.to_dict(), (run_dir / CHECKPOINT_NAME).read_bytes() if finished else None, str(run_dir))
                    for i, config, run_dir, finished in unit
                ]
                future = executor.submit(train_on_worker, runs, self.threads, versions, events.name)
                futures[future] = ", ".join(run_dir.name for _, _, run_dir, _ in unit)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                relay()  # before the results: a run's last epoch was queued before its task returned
                for future in done:
                    yield from self.outcome(future, futures[future])
        except SchedulerLost:
            raise
        except BaseException:
            with exit_on_second_interrupt():
                executor.shutdown(wait=False)  # cancels them all
                relay()
            raise
        finally:
            if self.client.status == "running":
                events.close()

    def outcome(self, future, name: str) -> list[tuple[int, list[dict], float]]:
        """A finished unit's (index, metrics, seconds) per run; a cluster that lost it is an error that says so."""
        from distributed.scheduler import KilledWorker

        try:
            result = future.result()
        except CancelledError:
            raise UserError(
                f"{name}: the Dask scheduler at {self.address} dropped the run (it restarted, or "
                "this process lost it); the finished epochs are kept: rerun the same command to resume"
            ) from None
        except KilledWorker as e:
            raise UserError(f"{name}: every Dask worker that trained it died ({e}); see the workers' logs") from None
        if result is None:
            raise UserError(f"{name}: the Dask scheduler at {self.address} cancelled the run")
        return result


class SchedulerLost(UserError):
    """The connection to the scheduler broke: it stopped, or the network did."""


class Relay:
    """Takes the workers' events off the study's queue: writes each new epoch's files into its run directory
    and tells `progress` of the starts, epochs and ends."""

    def __init__(self, events, run_dirs: dict[int, Path], written: dict[int, int], progress, address: str):
        self.events, self.run_dirs, self.written, self.progress = events, run_dirs, written, progress
        self.address = address

    def __call__(self) -> None:
        try:
            events = self.events.get(batch=True)
        except OSError as e:
            raise SchedulerLost(
                f"lost the Dask scheduler at {self.address} ({e}); every finished epoch is kept: "
                "rerun the same command once it is back to resume"
            ) from None
        for event in events:
            if event["kind"] == "start":
                self.progress.started(event["run"])
            elif event["kind"] == "end":
                self.progress.ended(event["run"])
            else:
                self.write_epoch(event["epoch"], event["runs"])

    def write_epoch(self, epoch: int, runs: list[dict]) -> None:
        """An epoch of the runs trained together (one, or an arm's seeds stacked): all of their files, or none."""
        # a run started again after its worker died repeats its epochs
        new = [(run["run"], run["files"]) for run in runs if epoch > self.written[run["run"]]]
        with interrupts_held():
            for i, files in new:
                for name in (*RUN_FILES, PREDICTIONS_NAME):  # the predictions come with a run's last epoch
                    if name in files:
                        atomic_write(self.run_dirs[i] / name, lambda f, content=files[name]: f.write(content))
                self.written[i] = epoch
        for i, _ in new:
            self.progress.epoch_done(i)


@contextmanager
def exit_on_second_interrupt() -> Iterator[None]:
    """Within the block, Ctrl-C exits at once: the runs are being cancelled, and the workers stop them by themselves."""

    def exit_now(signum, frame):
        os.write(sys.stderr.fileno(), b"\ninterrupted again: stopped now; rerun the same command to resume\n")
        os._exit(130)

    with signal_handler(signal.SIGINT, exit_now):
        yield


# ---------------------------------------------------------------- connecting, and checking the workers


def connect(address: str, dataset: str, threads: int, log=print) -> Cluster:
    """Connect to the Dask scheduler at `address` and check its workers; raises UserError, within seconds for a
    wrong address."""
    distributed = import_distributed()
    check_scheduler(address)
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)  # its errors about the scheduler repeat ours
    try:
        client = distributed.Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, ValueError) as e:
        raise UserError(f"--cluster {address}: cannot connect to the Dask scheduler ({e})") from None
    try:
        workers = client.scheduler_info()["workers"]
        if workers:
            check_workers(client, workers, dataset)
            n = len(workers)  # a worker process trains one run at a time
            log(
                f"{address}: {n} worker{'s' if n > 1 else ''}, {n} run{'s' if n > 1 else ''} at once, "
                f"{threads} thread{'s' if threads > 1 else ''} per run"
            )
            for a, info in workers.items():
                if info["nthreads"] > 1:
                    log(
                        f"note: {worker_label(info.get('name'), a)} takes {info['nthreads']} runs at a time, "
                        "and trains "
                        "them one after the other (runs in one process would share torch's random state): start "
                        "workers with --nworkers N --nthreads 1 to train N at once"
                    )
        else:
            log(f"{address}: no worker yet; the runs wait for one (dask worker {address})")
    except BaseException:
        client.close(timeout=CONNECT_SECONDS)
        raise
    return Cluster(address, client, threads, workers)


def check_address(address: str) -> None:
    """What `connect` checks first, for a command to call before its slow part: a Dask scheduler answers at
    `address`."""
    import_distributed()
    check_scheduler(address)


def check_scheduler(address: str) -> None:
    """Raise UserError, within CONNECT_SECONDS, unless a Dask scheduler answers at `address`.

    distributed.Client retries a refused connection until its timeout, and waits forever for a
    server that accepts the connection but does not speak Dask's protocol: hence this look first.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend
    from distributed.core import rpc

    try:
        scheme, location = parse_address(address, strict=False)
        get_backend(scheme)  # a scheme Dask knows
        host, port = parse_host_port(location) if scheme == "tcp" else (None, None)
        if port is not None and not (isinstance(port, int) and 0 < port <= 65535):
            raise ValueError(f"the port must be in 1..65535, got {port}")
    except ValueError as e:
        raise UserError(
            f"--cluster {address}: not the address of a Dask scheduler ({e}); it reads like tcp://HOST:8786"
        ) from None
    if host is not None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except socket.gaierror:
            raise UserError(f"--cluster {address}: unknown host {host!r}") from None
        except ConnectionRefusedError:
            raise UserError(
                f"--cluster {address}: nothing listens there; start the scheduler with `dask scheduler` "
                "on that machine, or give the address it prints"
            ) from None
        except OSError as e:
            raise UserError(f"--cluster {address}: cannot reach it ({e.strerror or e})") from None

    async def identity() -> dict:
        server = rpc(address)
        try:
            return await server.identity()
        finally:
            await server.close_rpc()

    try:
        info = asyncio.run(asyncio.wait_for(identity(), CONNECT_SECONDS))
    except (asyncio.TimeoutError, TimeoutError):
        raise UserError(
            f"--cluster {address}: no answer from a Dask scheduler within {CONNECT_SECONDS:g} s "
            "(is it a Dask scheduler's address?)"
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever answered there, it is not a scheduler we can use
        raise UserError(f"--cluster {address}: not a Dask scheduler ({type(e).__name__}: {e})") from None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        what = info.get("type", "server") if isinstance(info, dict) else "server"
        raise UserError(
            f"--cluster {address}: a Dask {what} answers there, not the scheduler; give the address "
            "that `dask scheduler` prints"
        )


def check_workers(client, workers: dict, dataset: str) -> None:
    """Raise UserError naming every worker that cannot train the study's runs: other versions, or no dataset."""
    facts = client.run(worker_facts, dataset, on_error="return")
    versions = own_versions()
    problems = []
    for address, info in workers.items():
        found = facts.get(address)  # a worker that left meanwhile has none
        label = worker_label(info.get("name"), address)
        if isinstance(found, BaseException):
            problems.append(
                f"{label} cannot run mnistlab ({type(found).__name__}: {found}); install mnistlab {__version__} there"
            )
        elif found is not None:
            problem = versions_problem(found, versions) or found["data"]
            if problem:
                problems.append(f"{label} {problem}")
    if problems:
        raise UserError(f"{'; '.join(problems)}")


def worker_label(name, address: str) -> str:
    return f"worker {address}" if name is None or str(name) == address else f"worker {name} ({address})"


def own_versions() -> dict:
    return {"mnistlab": __version__, "torch": torch.__version__}


def versions_problem(theirs: dict, ours: dict) -> str | None:
    """How a worker's versions differ from the study's, as the end of a sentence about the worker; None if they do not.

    torch's local build label (+cpu, +cu126) is left out: a GPU worker and a CPU client are a fair pair.
    """
    if theirs["mnistlab"] != ours["mnistlab"]:
        return (
            f"runs mnistlab {theirs['mnistlab']}, and this study mnistlab {ours['mnistlab']}: install the "
            "same version on every worker"
        )
    if theirs["torch"].split("+")[0] != ours["torch"].split("+")[0]:
        return (
            f"runs torch {theirs['torch']}, and this study torch {ours['torch']}, whose numbers could differ: "
            "install the same torch on every worker (constraints.txt)"
        )
    return None


# ---------------------------------------------------------------- on a worker

_arrays: dict = {}  # dataset name -> its arrays, loaded once per worker process
_one_run_at_a_time = threading.Lock()  # runs share torch's global random state and thread count


async def worker_facts(dataset: str) -> dict:
    """On a worker: its versions, and under "data" what keeps it from loading the dataset, or None.

    A coroutine, which Dask runs in the worker's event loop: the loading goes to a thread meanwhile.
    """
    return {**own_versions(), "data": await asyncio.to_thread(data_problem, dataset)}


def data_problem(dataset: str) -> str | None:
    """On a worker: why it cannot load `dataset`, as the end of a sentence about the worker; None if it can."""
    try:
        worker_arrays(dataset)
    except UserError as e:
        return (
            f"cannot load {dataset} ({e}): prepare it with `mnistlab data` on that machine, or point "
            "MNISTLAB_DATA at a copy of a data directory there, before starting the worker"
        )
    return None


def worker_arrays(dataset: str):
    """The dataset from this worker's own data directory, verified; never downloaded."""
    if dataset not in _arrays:
        _arrays[dataset] = data.load_dataset(dataset, log=lambda line: None, download=False)
    return _arrays[dataset]


class Cancelled(Exception):
    """The client cancelled the run going (Ctrl-C, or it left)."""


def plain_malloc() -> bool:
    """Give glibc's malloc the thresholds it settles at in a plain process; True where it could.

    Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes the
    mmap threshold at 128 KiB: every buffer torch frees goes back to the system and the next
    step faults it in again, many thousands of page faults a second. These are the values glibc's own
    adjustment reaches.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 64 * 2**20))


def train_on_worker(
    runs: list[tuple[int, dict, bytes | None, str]], threads: int, versions: dict, events_name: str
) -> list[tuple[int, list[dict], float]] | None:
    """A unit of a study (one run, or an arm's seeds stacked), on a Dask worker: (index, metrics, seconds) per run,
    or None if it was cancelled.

    Each run is (index, a TrainConfig's dict, the bytes of its checkpoint if it has finished
    epochs, the study's run directory for the messages): plain data, read after the versions are
    checked. The unit trains as study.train_unit trains it, in temporary directories; each run's
    files go to the study's queue after every epoch. A run that stops without learning returns its
    metrics with the failed epoch marked, as study.train_run does.
    """
    from distributed import (  # the optional extra: see connect
        Queue,
        get_client,
        get_worker,
    )

    worker = get_worker()
    label = worker_label(worker.name, worker.address)
    problem = versions_problem(own_versions(), versions) or data_problem(runs[0][1]["dataset"])
    if problem:
        raise UserError(f"{label} {problem}")
    configs = [TrainConfig.from_dict(config) for _, config, _, _ in runs]
    plain_malloc()
    events = Queue(events_name, client=get_client())
    with _one_run_at_a_time, tempfile.TemporaryDirectory(prefix="mnistlab-run-", dir=worker.local_directory) as tmp:
        arrays = worker_arrays(configs[0].dataset)
        torch.set_num_threads(threads)
        unit, epochs = [], {}
        for (i, _, resume, _), config in zip(runs, configs):
            run_dir = Path(tmp) / str(i)
            run_dir.mkdir()
            if resume is not None:
                (run_dir / CHECKPOINT_NAME).write_bytes(resume)
            epochs[i] = len(load_checkpoint(run_dir)["metrics"]) if resume is not None else 0
            unit.append((i, config, run_dir, epochs[i]))

        started_at = dict(epochs)  # runs that start at the same epoch train together (stacked.train_stacked_runs)

        def send_epoch(i: int) -> None:  # called once run i's epoch is on disk
            epochs[i] += 1
            together = [j for j in epochs if started_at[j] == started_at[i]]
            if any(epochs[j] != epochs[i] for j in together):
                return  # the last of them sends the epoch of them all
            runs = []
            for j in together:
                written = [*RUN_FILES, *[PREDICTIONS_NAME] * (Path(tmp) / str(j) / PREDICTIONS_NAME).exists()]
                runs.append({"run": j, "files": {name: (Path(tmp) / str(j) / name).read_bytes() for name in written}})
            # one event: the study writes this epoch of every seed trained together, or of none, and they
            # resume together (stacked, as they trained)
            events.put({"kind": "epoch", "epoch": epochs[i], "runs": runs})
            if cancelled(worker):
                raise Cancelled

        try:
            for i, *_ in runs:
                events.put({"kind": "start", "run": i})
            results = train_unit(unit, arrays, send_epoch)
            # a stopped run's message names the study's run directory, not the temporary one
            names = {str(Path(tmp) / str(i)): study_dir for i, _, _, study_dir in runs}
            return [(i, [rename_failure(row, names) for row in history], seconds) for i, history, seconds in results]
        except Cancelled:
            return None
        finally:
            try:
                for i, *_ in runs:
                    events.put({"kind": "end", "run": i})
            finally:
                events.close()


def rename_failure(row: dict, names: dict[str, str]) -> dict:
    """A metrics row whose "failed" message names a temporary run directory, with the study's instead."""
    if "failed" not in row:
        return row
    message = row["failed"]
    for tmp, study_dir in names.items():
        message = message.replace(tmp, study_dir)
    return {**row, "failed": message}


def cancelled(worker) -> bool:
    """Whether the client has let go of the task this thread runs (it cancelled it, or it left)."""
    task = worker.state.tasks.get(worker.get_current_task())
    return task is None or task.state in ("cancelled", "released")
