"""kfp.local hands a ParallelFor body another task's output, as the backend does (pipelines/kfp_local_fix.py)."""

# no `from __future__ import annotations`: KFP reads the components' annotations as types
import warnings
from typing import List

from kfp import dsl, local

from mammo.pipelines import kfp_local_fix

warnings.filterwarnings("ignore", message="The default base_image", category=FutureWarning)


@dsl.component
def settings() -> dict:
    return {"size": "seven"}


@dsl.component
def indices(n: int) -> List[int]:
    return list(range(n))


@dsl.component
def use(i: int, config: dict) -> str:
    if not isinstance(config, dict):
        raise TypeError(f"config is {config!r}, not the settings task's dict")
    return f"{i}:{config['size']}"


@dsl.component
def join(values: List[str]) -> str:
    return ",".join(sorted(values))


@dsl.pipeline(name="loop-with-task-outputs")
def loop_pipeline(n: int = 3) -> str:
    config = settings().output
    with dsl.ParallelFor(indices(n=n).output) as i:
        t = use(i=i, config=config)
    return join(values=dsl.Collected(t.output)).output


def test_loop_body_gets_the_other_task_output_not_the_loop_item(tmp_path):
    kfp_local_fix.apply()
    kfp_local_fix.apply()  # idempotent
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    assert loop_pipeline(n=3).output == "0:seven,1:seven,2:seven"


def test_a_task_ending_in_one_thread_does_not_silence_a_task_still_running_in_another():
    """ParallelFor iterations overlap in threads: the second's "finished" line must still be logged."""
    import logging
    import threading

    from kfp.local import logging_utils

    kfp_local_fix.apply()
    seen: list[str] = []
    root, level = logging.getLogger(), logging.getLogger().level

    class Record(logging.Filter):
        def filter(self, record):
            seen.append(record.getMessage())
            return True

    record = Record()
    root.addFilter(record)
    root.setLevel(logging.WARNING)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with logging_utils.local_logger_context():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with logging_utils.local_logger_context():
            second_in.set()
            first_out.wait(5)
            logging.info("Task 'second' finished with status SUCCESS")

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert "Task 'second' finished with status SUCCESS" in seen
        assert root.level == logging.WARNING  # the level from before is back once the last task ended
    finally:
        root.removeFilter(record)
        root.setLevel(level)
