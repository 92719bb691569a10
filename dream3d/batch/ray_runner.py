"""Batch entries as Ray tasks: `dream3d batch FILE --ray auto | ray://host:10001 | local`.

Each entry is one task (one GPU when the cluster has GPUs, else one CPU). The
driver (this process) keeps the state (batch.db) and the claims; a task only runs
`execute` and returns its Outcome. A task whose worker was lost (killed, out of
memory, node gone) raises a Ray error here; the scheduler retries it and the new
task resumes from the run's last checkpoint.

Where the batch folder is visible to the worker (one machine, or a shared file
system mounted at the same path on every node), the task works in it directly,
so its checkpoints survive a lost worker and its progress can be followed. Where
it is not, the task works in a node-local scratch folder and returns the finished
run folder as a tar.gz that the driver unpacks; a retry then resumes only if it
lands on the same node.
"""
from __future__ import annotations

import io
import tarfile
import tempfile
import uuid
from pathlib import Path

from dream3d.batch.job import Job, Outcome, execute
from dream3d.errors import UserError

TOKEN_FILE = ".batch-id"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'dream3d[ray]'") from None
    return ray


def folder_token(out: Path) -> str:
    """A random id written once into the batch folder; a worker that reads the same
    id at the same path shares the folder with the driver."""
    path = out / TOKEN_FILE
    try:
        with open(path, "x") as f:
            f.write(uuid.uuid4().hex)
    except FileExistsError:
        pass
    return path.read_text().strip()


def run_remote(job: Job, out_dir: str, token: str) -> Outcome:
    """The body of a Ray task."""
    shared = Path(out_dir) / TOKEN_FILE
    try:
        same_folder = shared.read_text().strip() == token
    except OSError:
        same_folder = False
    if same_folder:
        return execute(job)
    scratch = Path(tempfile.gettempdir()) / "dream3d-batch" / token / job.id
    outcome = execute(job, run_dir=scratch)
    if outcome.ok:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(scratch, arcname=".")
        outcome.archive = buf.getvalue()
    return outcome


def connect(address: str):
    """Join the cluster at `address` ('auto', 'ray://host:10001') or start a local instance ('local')."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot reach the Ray cluster at '{address}': {str(e).splitlines()[0]}") from None
    return ray


class RayExecutor:
    live_progress = False

    def __init__(self, address: str, out: Path):
        self.ray = connect(address)
        self.out = Path(out).resolve()
        self.token = folder_token(self.out)
        resources = self.ray.cluster_resources()
        self.gpus = resources.get("GPU", 0) > 0
        self.capacity = int(resources.get("GPU" if self.gpus else "CPU", 1))
        # Ray's own retries would hide a lost worker from the record: the scheduler retries instead.
        options = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        self.task = self.ray.remote(max_retries=0, **options)(run_remote)
        self.refs: dict = {}  # ObjectRef -> Job

    def free_slots(self) -> int:
        # As many tasks in flight as the cluster can run now (it may grow: an autoscaler adds nodes).
        capacity = int(self.ray.cluster_resources().get("GPU" if self.gpus else "CPU", 1))
        return max(1, capacity) - len(self.refs)

    def submit(self, job: Job) -> None:
        self.refs[self.task.remote(job, str(self.out), self.token)] = job

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                finished.append(self.ray.get(ref))
            except self.ray.exceptions.TaskCancelledError:
                finished.append(Outcome(job.id, ok=False, interrupted=True, error="cancelled"))
            except self.ray.exceptions.RayError as e:  # WorkerCrashedError, NodeDiedError, RayTaskError, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                finished.append(Outcome(job.id, ok=False, error=f"lost worker ({type(e).__name__}): {first}"))
        return finished

    def running(self) -> list[Job]:
        return list(self.refs.values())

    def cancel(self) -> None:
        for ref in self.refs:  # a KeyboardInterrupt in the task: it checkpoints and returns
            self.ray.cancel(ref, force=False)

    def close(self) -> None:
        pass  # the connection ends with this process; a cluster outlives it
