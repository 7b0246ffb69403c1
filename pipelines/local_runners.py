"""The two ``kfp.local`` runners of ``mammo run`` and the record of every task they ran.

``subprocess`` runs each task in this Python (fast, for development). ``docker`` runs each task
as Kubeflow does: in the image the compiled pipeline names for it (``CPU_IMAGE``/``GPU_IMAGE``), as
that image's non-root user, without a network, with the data mounted read-only and the serving root
read-write at the same paths as on the host (``kfp.local.DockerRunner`` itself mounts only the
pipeline root). The pipeline root and serving root are handed to the image's user for the run and
back to the invoking user afterwards.

``kfp.local`` can report success for a task that died (DockerRunner loses the exit code of a
container removed before it is waited for), so :func:`check_tasks` does not trust the status
alone: every task of a pipeline step must have left its ``report.json``, else the run fails naming
the task, its image and the last error line of its log.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mammo.components.contracts import STEPS, find_reports

log = logging.getLogger(__name__)

RUNNERS = ("subprocess", "docker")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
#: the last line of a Python traceback (``ValueError: ...``, ``SystemExit: ...``) or a kill
_EXCEPTION_LINE = re.compile(r"^([\w.]*(Error|Exception|Exit|Interrupt)(:|$)|Killed\b)")
#: a logged error (``... ERROR mammo...: ...``)
_LOGGED_ERROR = re.compile(r"\bERROR\b")


@dataclass
class Task:
    name: str
    image: str | None
    status: str = "RUNNING"
    seconds: float | None = None
    error: str | None = None
    started: float = field(default_factory=time.time, repr=False)
    log: list[str] = field(default_factory=list, repr=False)

    @property
    def step(self) -> str:
        """The pipeline step this task ran (KFP names tasks with hyphens, reports use underscores)."""
        return self.name.replace("-", "_")

    def summary(self) -> dict:
        out = {"name": self.name, "image": self.image, "status": self.status, "seconds": self.seconds}
        if self.error:
            out["error"] = self.error
        return out

    def last_error(self) -> str | None:
        """The error this task's log ends with: its last exception, else its last logged error, else its
        last line."""
        lines = [ln.strip() for ln in "".join(self.log).splitlines() if ln.strip()]
        for pattern in (_EXCEPTION_LINE, _LOGGED_ERROR):
            matches = [ln for ln in lines if pattern.search(ln)]
            if matches:
                return matches[-1]
        return lines[-1] if lines else None


def task_images(pipeline) -> dict[str, str]:
    """{task name: image} of a compiled pipeline (the names kfp.local logs its tasks by)."""
    from google.protobuf import json_format

    spec = pipeline.pipeline_spec
    executors = json_format.MessageToDict(spec.deployment_spec).get("executors", {})
    images = {}
    for component_name, component in spec.components.items():
        container = executors.get(component.executor_label, {}).get("container")
        if container:
            images[component_name.removeprefix("comp-")] = container["image"]
    return images


class TaskTracker(logging.Filter):
    """Records each kfp.local task (from kfp.local's own log lines) and its output, per thread.

    Installed as a filter on the root logger (kfp.local replaces the root logger's handlers, not
    its filters) and as a tee of ``sys.stdout`` (where kfp.local prints the tasks' output);
    ParallelFor iterations run in threads, so output is attributed by thread.
    """

    def __init__(self, images: dict[str, str]):
        super().__init__()
        self.images = images
        self.tasks: list[Task] = []
        self._current: dict[int, Task] = {}
        self._lock = threading.Lock()
        self._stdout = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        started, finished = _STARTED.search(message), _FINISHED.search(message)
        with self._lock:
            if started:
                task = Task(started[1], self.images.get(started[1]))
                self.tasks.append(task)
                self._current[threading.get_ident()] = task
            elif finished:
                task = self._current.pop(threading.get_ident(), None)
                if task and task.name == finished[1]:
                    task.status, task.seconds = finished[2], round(time.time() - task.started, 1)
        return True

    def write_log(self, text: str) -> None:
        task = self._current.get(threading.get_ident())
        if task is not None:
            task.log.append(text)

    def __enter__(self) -> "TaskTracker":
        logging.getLogger().addFilter(self)
        self._stdout = sys.stdout
        sys.stdout = _Tee(self._stdout, self)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout = self._stdout
        logging.getLogger().removeFilter(self)
        for task in self._current.values():  # a failure raised out of kfp.local ends the running tasks
            task.status, task.seconds = "FAILURE", round(time.time() - task.started, 1)
        self._current.clear()


class _Tee(io.TextIOBase):
    def __init__(self, stream, tracker: TaskTracker):
        self.stream, self.tracker = stream, tracker

    def write(self, text: str) -> int:
        self.tracker.write_log(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def check_tasks(tasks: list[Task], run_dir: Path | None) -> Task | None:
    """Mark tasks of pipeline steps that left no ``report.json`` as failed; the first failed task, if any."""
    reports = find_reports(run_dir) if run_dir else {}
    ran: dict[str, int] = {}
    for task in tasks:
        if task.step not in STEPS:
            continue  # helper tasks (no report contract): their status is all there is
        ran[task.step] = ran.get(task.step, 0) + 1
        if task.status == "SUCCESS" and len(reports.get(task.step, [])) < ran[task.step]:
            task.status, task.error = "FAILURE", "reported success but wrote no report.json"
    for task in tasks:
        if task.status != "SUCCESS":
            if task.error is None:
                task.error = task.last_error()
            elif task.last_error():
                task.error += f"; last error in its log: {task.last_error()}"
            return task
    return None


# -- the docker runner ---------------------------------------------------------------------------


def docker_runner(images: dict[str, str], read_only: list[str], writable: list[str], pipeline_root: str):
    """A ``kfp.local.DockerRunner``: no network, the images' user, these host paths at the same paths."""
    from docker.types import Mount
    from kfp import local

    check_images(set(images.values()))
    mounts, seen = [], {pipeline_root}
    for path, ro in [(p, True) for p in read_only] + [(p, False) for p in writable]:
        if path in seen:
            continue
        seen.add(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist (it is mounted into the task containers)")
        mounts.append(Mount(target=path, source=path, type="bind", read_only=ro))
    return local.DockerRunner(network_mode="none", mounts=mounts)


def _client():
    try:
        import docker
    except ImportError as exc:  # the `docker` extra
        raise RuntimeError("--runner docker needs the Docker SDK: pip install 'docker>=7'") from exc
    from mammo.pipelines.images import check_daemon

    check_daemon()  # a clear error (and how to start dockerd) before kfp.local tries
    return docker.from_env()


def check_images(images: set[str]) -> dict[str, str]:
    """{image: user}; fails naming an image that is missing here or would run as root."""
    from mammo.pipelines.images import is_root_user

    client = _client()
    users = {}
    for image in sorted(images):
        try:
            users[image] = client.images.get(image).attrs["Config"].get("User") or ""
        except Exception as exc:  # docker.errors.ImageNotFound
            raise RuntimeError(f"image {image} is not on this machine: build it with `mammo images build` "
                               "(add --local-base where no container registry is reachable)") from exc
        if is_root_user(users[image]):
            raise RuntimeError(f"image {image} runs as root (USER {users[image]!r}); the pipeline's images must not")
    return users


def hand_over(paths: list[str], owner: str, image: str) -> None:
    """``chown -R owner`` on host paths, done in a root container of ``image`` (no network), so it
    works whoever invokes it and whatever the image's user is."""
    from docker.types import Mount

    existing = [p for p in paths if Path(p).exists()]
    if not existing:
        return
    _client().containers.run(image, ["chown", "-R", owner, *existing], user="0:0", network_mode="none",
                              remove=True, mounts=[Mount(target=p, source=p, type="bind") for p in existing])


def invoking_user() -> str:
    """uid:gid the run's outputs go back to: the sudo caller, else this process's user."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid and gid:
        return f"{uid}:{gid}"
    return f"{os.getuid()}:{os.getgid()}"
