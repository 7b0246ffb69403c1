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
