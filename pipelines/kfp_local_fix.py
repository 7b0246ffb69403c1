"""Two corrections to ``kfp.local`` (kfp 2.17) so that it runs the same pipeline as the cluster.

1. kfp.local's ``task_spec_utils.create_parameter_loop_iteration_task_spec`` builds each iteration
   of a ``ParallelFor`` by replacing *every* input of the loop task that is another task's output
   with the loop item, not only the loop's items. The backend's driver resolves such an input to
   that task's output (``resolve.go`` resolveUpstreamParameters). Our loops receive
   ``resolve_config``'s output (the run's config): without this correction kfp.local hands the
   extraction and training tasks a shard number or a backbone name as their config. The wrapper
   keeps the other task outputs' producer, as on the cluster.
2. ``logging_utils.local_logger_context`` (entered around every task) saves the root logger's level
   and handlers, sets its own, and restores what it saved on exit. ``ParallelFor`` iterations run
   in threads, so when the first of two overlapping iterations ends it restores the level from
   before the run (WARNING) under the second, whose "Task ... finished" line is then dropped: the
   run loses the record of that task's success. The replacement sets the logger up when the first
   user enters and restores it when the last one leaves.

:func:`apply` installs both; it is idempotent and changes nothing else. ``mammo.pipelines.pipeline``
applies it when it is imported, so every caller of ``mammo_pipeline`` (``mammo run``, ``mammo
demo``, tests) runs the pipeline as the cluster would.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_MARK = "_mammo_keeps_task_outputs"


def apply() -> None:
    """Install the corrected iteration builder and logger context into kfp.local (once per process)."""
    _keep_task_outputs_in_loops()
    _share_the_logger_context_between_threads()


def _keep_task_outputs_in_loops() -> None:
    from kfp.local.orchestrator import task_spec_utils

    original = task_spec_utils.create_parameter_loop_iteration_task_spec
    if getattr(original, _MARK, False):
        return

    def create_parameter_loop_iteration_task_spec(original_task_spec, loop_item, loop_task_name):
        spec = original(original_task_spec, loop_item, loop_task_name)
        items = (original_task_spec.parameter_iterator.items.input_parameter
                 if original_task_spec.WhichOneof("iterator") == "parameter_iterator" else "")
        for name, input_spec in original_task_spec.inputs.parameters.items():
            if input_spec.HasField("task_output_parameter") and name != items:
                spec.inputs.parameters[name].CopyFrom(input_spec)
        return spec

    setattr(create_parameter_loop_iteration_task_spec, _MARK, True)
    task_spec_utils.create_parameter_loop_iteration_task_spec = create_parameter_loop_iteration_task_spec


def _share_the_logger_context_between_threads() -> None:
    from kfp.local import logging_utils

    original = logging_utils.local_logger_context
    if getattr(original, _MARK, False):
        return
    lock, users, active = threading.Lock(), [0], []

    @contextlib.contextmanager
    def local_logger_context() -> Iterator[None]:
        with lock:
            users[0] += 1
            if users[0] == 1:
                context = original()
                context.__enter__()
                active.append(context)
        try:
            yield
        finally:
            with lock:
                users[0] -= 1
                if users[0] == 0:
                    active.pop().__exit__(None, None, None)

    setattr(local_logger_context, _MARK, True)
    logging_utils.local_logger_context = local_logger_context
