"""One correction to ``kfp.local`` (kfp 2.17) so that it runs the same pipeline as the cluster.

kfp.local's ``task_spec_utils.create_parameter_loop_iteration_task_spec`` builds each iteration of
a ``ParallelFor`` by replacing *every* input of the loop task that is another task's output with
the loop item, not only the loop's items. The backend's driver resolves such an input to that
task's output (``resolve.go`` resolveUpstreamParameters). Our loops receive ``resolve_config``'s
output (the run's config): without this correction kfp.local hands the extraction and training
tasks a shard number or a backbone name as their config. :func:`apply` wraps the function so the
other task outputs keep their producer, as on the cluster; it is idempotent and changes nothing
else. ``mammo.pipelines.pipeline`` applies it when it is imported, so every caller of
``mammo_pipeline`` (``mammo run``, ``mammo demo``, tests) runs the pipeline as the cluster would.
"""

from __future__ import annotations

_MARK = "_mammo_keeps_task_outputs"


def apply() -> None:
    """Install the corrected iteration builder into kfp.local (once per process)."""
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
