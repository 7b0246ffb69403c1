"""``mammo lint``: small known-bad pipelines, each breaking one KFP backend rule, fail with a message
naming the task, the input and both types; the mammo pipeline passes (see test_pipeline_compile).

Most fixtures are compiled by the real KFP compiler (it accepts them; the backend does not). Where
the compiler itself refuses the mistake, the fixture is a compiled good pipeline with its IR edited
the way an older SDK, a hand-written component or a YAML edit would leave it.
"""

# no `from __future__ import annotations`: KFP reads the components' annotations as types

import re
import warnings
from typing import List

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model, Output

from mammo.pipelines.cli import main
from mammo.pipelines.lint import RULES, lint_file, lint_spec

warnings.filterwarnings("ignore", message="The default base_image", category=FutureWarning)


@dsl.component
def use_int(i: int) -> str:
    return str(i)


@dsl.component
def use_str(s: str) -> int:
    return len(s)


@dsl.component
def flag() -> bool:
    return True


@dsl.component
def noop():
    pass


@dsl.component
def make_data(data: Output[Dataset]):
    open(data.path, "w").close()


@dsl.component
def read_model(model: Input[Model]):
    pass


def _compile(func, tmp_path) -> dict:
    out = tmp_path / f"{func.name}.yaml"
    compiler.Compiler().compile(func, str(out))
    return yaml.safe_load(out.read_text())


def _one(problems, rule: str):
    assert [p.rule for p in problems] == [rule], [str(p) for p in problems]
    return problems[0]


# -- parameter types along every edge ------------------------------------------------------------------


def test_untyped_list_parameter_loop_item_into_an_integer_input(tmp_path):
    """The issue's point 1: a `list` parameter's loop item is declared STRING, so the loop body gets "0"."""

    @dsl.pipeline(name="untyped-list")
    def p(items: list = [0, 1]):
        with dsl.ParallelFor(items) as i:
            use_int(i=i)

    problem = _one(lint_spec(_compile(p, tmp_path)), "param-type")
    assert re.fullmatch(r"for-loop-\d+/use-int", problem.task) and problem.input == "i"
    assert "expects NUMBER_INTEGER but gets STRING" in problem.message and "'items'" in problem.message
    assert "handleParamTypeValidationAndConversion" in str(problem)


def test_typed_list_and_task_output_lists_pass(tmp_path):
    @dsl.component
    def plan(n: int) -> List[int]:
        return list(range(n))

    @dsl.pipeline(name="typed-lists")
    def p(items: List[int] = [0, 1], n: int = 2):
        with dsl.ParallelFor(items) as i:
            use_int(i=i)
        with dsl.ParallelFor(plan(n=n).output) as j:
            use_int(i=j)
        with dsl.ParallelFor([3, 4]) as k:
            use_int(i=k)

    assert lint_spec(_compile(p, tmp_path)) == []


def test_raw_list_of_strings_into_an_integer_loop_item(tmp_path):
    @dsl.pipeline(name="raw-list")
    def p():
        with dsl.ParallelFor([0, 1]) as i:
            use_int(i=i)

    spec = _compile(p, tmp_path)
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    loop["parameterIterator"]["items"]["raw"] = '["0", "1"]'
    problem = _one(lint_spec(spec), "loop-items")
    assert re.fullmatch(r"for-loop-\d+", problem.task)
    assert "declared NUMBER_INTEGER but raw list" in problem.message and "holds a STRING" in problem.message


def test_task_output_of_another_type(tmp_path):
    @dsl.pipeline(name="task-output")
    def p():
        use_int(i=use_str(s="abc").output)

    spec = _compile(p, tmp_path)
    spec["components"]["comp-use-str"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] = "STRING"
    problem = _one(lint_spec(spec), "param-type")
    assert (problem.task, problem.input) == ("use-int", "i")
    assert "expects NUMBER_INTEGER but gets STRING from output use-str.Output (STRING)" in problem.message


def test_collected_outputs_are_a_list(tmp_path):
    @dsl.component
    def total(values: List[str]) -> int:
        return len(values)

    @dsl.pipeline(name="collected")
    def p():
        with dsl.ParallelFor([1, 2]) as i:
            t = use_int(i=i)
        total(values=dsl.Collected(t.output))

    spec = _compile(p, tmp_path)
    assert lint_spec(spec) == []
    spec["components"]["comp-total"]["inputDefinitions"]["parameters"]["values"]["parameterType"] = "NUMBER_INTEGER"
    problem = _one(lint_spec(spec), "param-type")
    assert problem.task == "total" and problem.input == "values"
    assert "expects NUMBER_INTEGER but gets LIST from Collected output for-loop-2.pipelinechannel--use-int-Output" \
           in problem.message


def test_pipeline_input_of_another_type(tmp_path):
    @dsl.pipeline(name="pipeline-input")
    def p(n: int = 1):
        use_int(i=n)

    spec = _compile(p, tmp_path)
    spec["root"]["inputDefinitions"]["parameters"]["n"].update(parameterType="BOOLEAN", defaultValue=True)
    problem = _one(lint_spec(spec), "param-type")
    assert "expects NUMBER_INTEGER but gets BOOL from pipeline parameter 'n' (BOOLEAN)" in problem.message


def test_missing_parent_input_and_missing_required_value(tmp_path):
    @dsl.pipeline(name="refs")
    def p(n: int = 1):
        use_int(i=n)

    spec = _compile(p, tmp_path)
    task = spec["root"]["dag"]["tasks"]["use-int"]
    task["inputs"]["parameters"]["i"] = {"componentInputParameter": "nope"}
    problem = _one(lint_spec(spec), "param-source")
    assert problem.input == "i" and "'nope'" in problem.message
    del task["inputs"]["parameters"]["i"]
    problem = _one(lint_spec(spec), "param-missing")
    assert problem.input == "i" and "required NUMBER_INTEGER input" in problem.message


# -- conditions, runtime parameters, artifacts -------------------------------------------------------------


def test_condition_compares_a_boolean_output_with_a_string(tmp_path):
    @dsl.pipeline(name="condition")
    def p():
        f = flag()
        with dsl.If(f.output == "true"):
            noop()

    problem = _one(lint_spec(_compile(p, tmp_path)), "condition")
    assert problem.task == "condition-1" and problem.input == "pipelinechannel--flag-Output"
    assert "output flag.Output (BOOLEAN) as BOOLEAN, a BOOL, with the STRING literal 'true'" in problem.message

    @dsl.pipeline(name="condition-ok")
    def ok():
        f = flag()
        with dsl.If(f.output == True):  # noqa: E712
            noop()

    assert lint_spec(_compile(ok, tmp_path)) == []


def test_condition_on_a_string_literal_against_a_number(tmp_path):
    @dsl.component
    def count() -> int:
        return 1

    @dsl.pipeline(name="condition-number")
    def p():
        with dsl.If(count().output == "1"):
            noop()

    spec = _compile(p, tmp_path)
    problem = _one(lint_spec(spec), "condition")
    assert "a NUMBER, with the STRING literal '1'" in problem.message
    # the same comparison written by hand without the SDK's quotes: CEL compares int with string
    task = spec["root"]["dag"]["tasks"]["condition-1"]
    task["triggerPolicy"]["condition"] = "inputs.parameter_values['pipelinechannel--count-Output'] == '1'"
    problem = _one(lint_spec(spec), "condition")
    assert "a NUMBER, with the STRING literal '1'" in problem.message


def test_integer_parameter_as_gpu_count_is_read_as_empty(tmp_path):
    @dsl.pipeline(name="gpu-int")
    def p(gpus: int = 1):
        noop().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)

    problem = _one(lint_spec(_compile(p, tmp_path)), "runtime-param")
    assert problem.task == "noop" and problem.input == "pipelinechannel--gpus"
    assert "resources.accelerator.resourceCount needs a STRING parameter but gets NUMBER" in problem.message


def test_gpu_count_parameter_inside_a_loop_never_reaches_the_loop(tmp_path):
    """KFP 2.17's compiler does not pass a resource parameter into a ParallelFor: why GPUs are compile-time."""

    @dsl.pipeline(name="gpu-loop")
    def p(gpus: str = "1", items: List[str] = ["a"]):
        with dsl.ParallelFor(items):
            noop().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)

    problems = lint_spec(_compile(p, tmp_path))
    assert {p.rule for p in problems} == {"param-source"}
    assert all(p.input == "pipelinechannel--gpus" and p.task.endswith("/noop") for p in problems)


def test_artifact_type_and_list_mismatch(tmp_path):
    @dsl.component
    def read_data(data: Input[Dataset]):
        pass

    @dsl.pipeline(name="artifacts")
    def p():
        read_data(data=make_data().outputs["data"])

    spec = _compile(p, tmp_path)
    assert lint_spec(spec) == []
    spec["components"]["comp-read-data"]["inputDefinitions"]["artifacts"]["data"]["artifactType"]["schemaTitle"] = \
        "system.Model"
    problem = _one(lint_spec(spec), "artifact-type")
    assert (problem.task, problem.input) == ("read-data", "data")
    assert "expects system.Model but gets system.Dataset from output make-data.data" in problem.message
    spec["components"]["comp-read-data"]["inputDefinitions"]["artifacts"]["data"].update(
        artifactType={"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}, isArtifactList=True)
    problem = _one(lint_spec(spec), "artifact-type")
    assert "expects a list of system.Dataset but gets one artifact" in problem.message


def test_every_rule_names_the_backend_function_it_mirrors():
    for rule, source in RULES.items():
        assert re.search(r"(resolve|driver)\.go \w+", source), rule


def test_cli_lint_fails_on_a_bad_file_and_passes_a_good_one(tmp_path, capsys):
    @dsl.pipeline(name="untyped")
    def bad(items: list = [0]):
        with dsl.ParallelFor(items) as i:
            use_int(i=i)

    _compile(bad, tmp_path)
    with pytest.raises(SystemExit, match="1 problem"):
        main(["lint", str(tmp_path / "untyped.yaml")])
    assert re.search(r"for-loop-\d+/use-int: input 'i': expects NUMBER_INTEGER but gets STRING", capsys.readouterr().out)

    good = tmp_path / "mammo.yaml"
    assert main(["compile", "--out", str(good), "--profile", "demo"]) == 0
    assert main(["lint", str(good)]) == 0 and lint_file(good) == []
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        (tmp_path / "x.yaml").write_text("a: 1\n")
        lint_file(tmp_path / "x.yaml")
