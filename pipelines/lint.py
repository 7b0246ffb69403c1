"""``mammo lint``: the KFP backend's input-resolution rules applied to a compiled pipeline (IR YAML).

``kfp.local`` resolves inputs in Python and converts types freely; the Kubeflow Pipelines backend
(the v2 driver, Go) does not. This check walks every DAG of the compiled spec the way the driver
resolves it at run time and reports what the backend would reject or silently get wrong, before
anything is submitted. Each rule names the backend function it mirrors (kubeflow/pipelines,
``backend/src/v2/driver/resolve.go`` and ``driver.go``, KFP 2.x):

* ``param-type`` (``resolveInputs`` -> ``handleParamTypeValidationAndConversion``): a value reaching
  an input declared NUMBER_INTEGER / NUMBER_DOUBLE / BOOLEAN / LIST / STRUCT must already be of that
  JSON kind (a number for both number types); only STRING inputs convert (any value becomes its
  JSON text). A DAG (loop, condition) converts its own STRING inputs too, so a loop item declared
  STRING reaches the loop body as a string. Values come from pipeline inputs, loop items (lists of
  literals, raw lists, list parameters), ``Collected`` loop outputs (always a list:
  ``CollectInputs``), task outputs (the launcher parses them by their declared type) and constants.
* ``param-missing`` (``resolveInputs``: "neither value nor default value provided for non-optional
  parameter"): a required component input without a value or default.
* ``param-source`` (``resolveInputParameter`` / ``resolveUpstreamParameters``: "parent DAG does
  not have input parameter", "producer task ... not in tasks"): every reference must exist in the
  DAG that resolves it.
* ``loop-items`` (``resolveInputs`` iteration driver -> ``getItems``): a loop iterates over a LIST
  value or a raw JSON list; a raw list's elements must fit the loop item's declared type.
* ``artifact-source`` / ``artifact-type`` (``resolveInputArtifact`` / ``resolveUpstreamArtifacts``;
  the backend passes whatever artifact it finds, so the SDK compiler's compatibility rule
  ``kfp.dsl.types.type_utils.verify_type_compatibility`` is what keeps it sound): the producer and
  its output key exist, schema titles agree (``system.Artifact`` accepts any) and a list input
  (``Input[List[...]]``) is fed a ``Collected`` output and nothing else.
* ``condition`` (``driver.go`` DAG driver: ``expr.Condition`` on the resolved, converted inputs;
  CEL compares without conversion): an operand of a ``dsl.If`` must exist and be of the literal's
  kind (a BOOLEAN output compared with ``'true'`` never triggers).
* ``runtime-param`` (``resolvePodSpecInputRuntimeParameter`` via ``initPodSpecPatch`` /
  ``getPodResource``): a pipeline parameter used as CPU, memory, accelerator type or count, or
  image is read with ``GetStringValue``: it must be an input of the task and a string (an
  integer parameter becomes "" and the GPU limit is silently dropped).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES: dict[str, str] = {
    "param-type": "resolve.go resolveInputs/handleParamTypeValidationAndConversion",
    "param-missing": "resolve.go resolveInputs/handleParamTypeValidationAndConversion",
    "param-source": "resolve.go resolveInputParameter, resolveUpstreamParameters",
    "loop-items": "resolve.go resolveInputs (iteration driver), getItems",
    "artifact-source": "resolve.go resolveInputArtifact, resolveUpstreamArtifacts",
    "artifact-type": "resolve.go resolveUpstreamArtifacts + kfp type_utils.verify_type_compatibility",
    "condition": "driver.go DAG driver expr.Condition (CEL, no conversion)",
    "runtime-param": "resolve.go resolvePodSpecInputRuntimeParameter (initPodSpecPatch, getPodResource)",
}

#: JSON kind a value of each declared parameter type has at run time
KIND_OF = {"STRING": "string", "NUMBER_INTEGER": "number", "NUMBER_DOUBLE": "number", "BOOLEAN": "bool",
           "LIST": "list", "STRUCT": "struct", "TASK_FINAL_STATUS": "struct", "TASK_CONFIG": "struct"}
UNKNOWN = "unknown"
_PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")
_OPERAND = r"(?:(int|double|string|bool)\()?inputs\.parameter_values\['([^']+)'\]\)?"
_LITERAL = r"(true|false|-?\d+(?:\.\d+)?|'[^']*'|\"[^\"]*\")"
_COMPARISONS = (re.compile(_OPERAND + r"\s*(?:==|!=|<=|>=|<|>)\s*" + _LITERAL),
                re.compile(_LITERAL + r"\s*(?:==|!=|<=|>=|<|>)\s*" + _OPERAND))
#: what the KFP SDK writes for a non-string output compared with a string: the operand in quotes
_QUOTED = re.compile("'" + _OPERAND + r"'\s*(?:==|!=|<=|>=|<|>)\s*" + _LITERAL)


@dataclass(frozen=True)
class Problem:
    """One backend rule broken: where (task path, input) and why (both types)."""

    rule: str
    task: str
    input: str
    message: str

    def __str__(self) -> str:
        return f"{self.task}: input {self.input!r}: {self.message} [{self.rule}: {RULES[self.rule]}]"


@dataclass(frozen=True)
class Value:
    """What the backend holds for a parameter at run time: a JSON kind, a label for messages and,
    when known (literal lists, list defaults), the kinds of a list's elements."""

    kind: str
    label: str
    elements: tuple[str, ...] | None = None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "struct"
    return "null"


def _list_value(items: list, label: str) -> Value:
    return Value("list", label, tuple(_json_kind(v) for v in items))


class _Linter:
    def __init__(self, spec: dict):
        self.spec = spec
        self.components = spec.get("components", {})
        self.executors = spec.get("deploymentSpec", {}).get("executors", {})
        self.problems: list[Problem] = []

    def add(self, rule: str, task: str, name: str, message: str) -> None:
        self.problems.append(Problem(rule, task, name, message))

    # -- walking ---------------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        root = self.spec["root"]
        params = {}
        for name, p in root.get("inputDefinitions", {}).get("parameters", {}).items():
            declared = p.get("parameterType", "STRING")
            default = p.get("defaultValue")
            label = f"pipeline parameter {name!r} ({declared})"
            params[name] = (_list_value(default, label) if declared == "LIST" and isinstance(default, list)
                            else Value(KIND_OF.get(declared, UNKNOWN), label))
        artifacts = {name: self._artifact_decl(a) for name, a in
                     root.get("inputDefinitions", {}).get("artifacts", {}).items()}
        self.dag("", root.get("dag", {}), params, artifacts)
        return self.problems

    def dag(self, path: str, dag: dict, params: dict[str, Value], artifacts: dict[str, tuple[str, bool]]) -> None:
        tasks = dag.get("tasks", {})
        for name, task in tasks.items():
            self.task(f"{path}{name}", task, tasks, params, artifacts)

    def task(self, where: str, task: dict, siblings: dict, scope: dict[str, Value],
             scope_artifacts: dict[str, tuple[str, bool]]) -> None:
        comp = self.components.get(task.get("componentRef", {}).get("name", ""), {})
        inputs = {name: self.param_source(where, name, spec, siblings, scope)
                  for name, spec in task.get("inputs", {}).get("parameters", {}).items()}
        declared = comp.get("inputDefinitions", {}).get("parameters", {})
        iterator = task.get("parameterIterator")
        passed = {}  # the iterator's items list: the iteration driver neither checks nor converts it
        if iterator:
            item_name = iterator.get("itemInput", "")
            item = self.loop_item(where, iterator, inputs, declared.get(item_name, {}))
            items_name = iterator.get("items", {}).get("inputParameter")
            passed = {k: v for k, v in inputs.items() if k == items_name}
            inputs = {k: v for k, v in inputs.items() if k != items_name}
            declared = {k: v for k, v in declared.items() if k != items_name}
            if item is not None:
                inputs[item_name] = item
        resolved = {**self.check_parameters(where, inputs, declared), **passed}
        self.check_artifacts(where, task, siblings, scope_artifacts, comp)
        if "triggerPolicy" in task:
            self.check_condition(where, task["triggerPolicy"].get("condition", ""), resolved)
        if "dag" in comp:
            arts = {n: self._artifact_decl(a) for n, a in comp.get("inputDefinitions", {}).get("artifacts", {}).items()}
            self.dag(f"{where}/", comp["dag"], resolved, arts)
        elif "executorLabel" in comp:
            self.check_runtime_params(where, comp["executorLabel"], inputs)

    # -- parameters ------------------------------------------------------------------------------

    def param_source(self, where: str, name: str, spec: dict, siblings: dict, scope: dict[str, Value]) -> Value:
        if "componentInputParameter" in spec:
            ref = spec["componentInputParameter"]
            if ref not in scope:
                self.add("param-source", where, name, f"reads {ref!r}, which its parent DAG does not have as an input")
                return Value(UNKNOWN, f"missing parent input {ref!r}")
            return scope[ref]
        if "taskOutputParameter" in spec:
            out = spec["taskOutputParameter"]
            return self.task_output(where, name, out.get("producerTask", ""), out.get("outputParameterKey", ""), siblings)
        if "runtimeValue" in spec:
            constant = spec["runtimeValue"].get("constant")
            if isinstance(constant, list):
                return _list_value(constant, f"constant {json.dumps(constant)[:40]}")
            return Value(_json_kind(constant), f"constant {json.dumps(constant)[:40]}")
        if "taskFinalStatus" in spec:
            return Value("struct", "task final status")
        return Value(UNKNOWN, "unknown source")

    def task_output(self, where: str, name: str, producer: str, key: str, siblings: dict) -> Value:
        if producer not in siblings:
            self.add("param-source", where, name, f"reads an output of task {producer!r}, which is not in its DAG")
            return Value(UNKNOWN, f"missing task {producer!r}")
        ptask = siblings[producer]
        pcomp = self.components.get(ptask.get("componentRef", {}).get("name", ""), {})
        out = pcomp.get("outputDefinitions", {}).get("parameters", {}).get(key)
        if out is None:
            self.add("param-source", where, name, f"reads output {key!r} of task {producer!r}, which has no such output")
            return Value(UNKNOWN, f"missing output {producer}.{key}")
        declared = out.get("parameterType", "STRING")
        if "parameterIterator" in ptask:  # a loop's output: CollectInputs gathers one value per iteration
            return Value("list", f"Collected output {producer}.{key} (LIST)")
        return Value(KIND_OF.get(declared, UNKNOWN), f"output {producer}.{key} ({declared})")

    def loop_item(self, where: str, iterator: dict, inputs: dict[str, Value], declared: dict) -> Value | None:
        items = iterator.get("items", {})
        item_type = declared.get("parameterType", "STRING")
        if "raw" in items:
            try:
                raw = json.loads(items["raw"])
            except json.JSONDecodeError:
                raw = None
            if not isinstance(raw, list):
                self.add("loop-items", where, iterator.get("itemInput", ""), f"raw items {items['raw']!r} are not a JSON list")
                return None
            source = _list_value(raw, f"raw list {items['raw'][:40]}")
        else:
            name = items.get("inputParameter", "")
            source = inputs.get(name)
            if source is None:
                self.add("loop-items", where, name, "the loop's items parameter is not an input of the loop task")
                return None
            if source.kind not in ("list", UNKNOWN):
                self.add("loop-items", where, name, f"iterates over {source.label}, a {source.kind}, not a LIST")
                return None
        kinds = set(source.elements or ())
        label = f"loop item of {source.label}"
        if item_type != "STRING" and kinds - {KIND_OF.get(item_type)}:
            for kind in sorted(kinds - {KIND_OF.get(item_type)}):
                self.add("loop-items", where, iterator.get("itemInput", ""),
                         f"loop item declared {item_type} but {source.label} holds a {kind.upper()}")
            return Value(UNKNOWN, label)  # the iteration fails here; its body never runs
        if len(kinds) == 1:
            return Value(kinds.pop(), label)
        return Value(UNKNOWN, label)

    def check_parameters(self, where: str, inputs: dict[str, Value], declared: dict) -> dict[str, Value]:
        """Mirror of handleParamTypeValidationAndConversion; returns the converted values."""
        resolved = dict(inputs)
        for name, spec in declared.items():
            ptype = spec.get("parameterType", "STRING")
            if name not in inputs:
                if not spec.get("isOptional") and spec.get("defaultValue") is None:
                    self.add("param-missing", where, name, f"required {ptype} input has no value and no default")
                continue
            value = inputs[name]
            if ptype == "STRING":
                resolved[name] = Value("string", f"{value.label} as STRING")
                continue
            expected = KIND_OF.get(ptype, UNKNOWN)
            if value.kind not in (UNKNOWN, expected):
                self.add("param-type", where, name,
                         f"expects {ptype} but gets {value.kind.upper()} from {value.label}")
            resolved[name] = Value(expected, f"{value.label} as {ptype}", value.elements)
        return resolved

    # -- artifacts -------------------------------------------------------------------------------

    @staticmethod
    def _artifact_decl(spec: dict) -> tuple[str, bool]:
        return spec.get("artifactType", {}).get("schemaTitle", "system.Artifact"), bool(spec.get("isArtifactList"))

    def artifact_output(self, where: str, name: str, producer: str, key: str, siblings: dict) -> tuple[str, bool] | None:
        if producer not in siblings:
            self.add("artifact-source", where, name, f"reads an artifact of task {producer!r}, which is not in its DAG")
            return None
        ptask = siblings[producer]
        pcomp = self.components.get(ptask.get("componentRef", {}).get("name", ""), {})
        out = pcomp.get("outputDefinitions", {}).get("artifacts", {}).get(key)
        if out is None:
            self.add("artifact-source", where, name, f"reads artifact {key!r} of task {producer!r}, which has no such output")
            return None
        title, is_list = self._artifact_decl(out)
        return title, is_list or "parameterIterator" in ptask

    def check_artifacts(self, where: str, task: dict, siblings: dict, scope: dict[str, tuple[str, bool]], comp: dict) -> None:
        declared = comp.get("inputDefinitions", {}).get("artifacts", {})
        for name, spec in task.get("inputs", {}).get("artifacts", {}).items():
            if "componentInputArtifact" in spec:
                ref = spec["componentInputArtifact"]
                source = scope.get(ref)
                if source is None:
                    self.add("artifact-source", where, name, f"reads artifact {ref!r}, which its parent DAG does not have")
                    continue
                origin = f"parent input {ref!r}"
            elif "taskOutputArtifact" in spec:
                out = spec["taskOutputArtifact"]
                source = self.artifact_output(where, name, out.get("producerTask", ""), out.get("outputArtifactKey", ""),
                                              siblings)
                if source is None:
                    continue
                origin = f"output {out.get('producerTask')}.{out.get('outputArtifactKey')}"
            else:
                continue
            if name not in declared:
                continue  # a DAG passes artifacts through under the names it declares below
            want_title, want_list = self._artifact_decl(declared[name])
            title, is_list = source
            if want_title != title and "system.Artifact" not in (want_title, title):
                self.add("artifact-type", where, name, f"expects {want_title} but gets {title} from {origin}")
            if want_list != is_list:
                self.add("artifact-type", where, name,
                         f"expects {'a list of ' if want_list else 'one '}{want_title} but gets "
                         f"{'a list (Collected)' if is_list else 'one artifact'} from {origin}")

    # -- conditions and pod-spec parameters ----------------------------------------------------------

    def check_condition(self, where: str, condition: str, resolved: dict[str, Value]) -> None:
        for cast, name, literal in _QUOTED.findall(condition):
            value = resolved.get(name, Value(UNKNOWN, repr(name)))
            self.add("condition", where, name, f"condition compares {value.label}, a {value.kind.upper()}, with the "
                                               f"STRING literal {literal}, and quotes the operand: the backend's CEL "
                                               f"cannot evaluate {condition!r}")
        condition = _QUOTED.sub("", condition)
        for pattern in _COMPARISONS:
            for match in pattern.finditer(condition):
                groups = match.groups()
                if pattern is _COMPARISONS[0]:
                    cast, name, literal = groups
                else:
                    literal, cast, name = groups
                value = resolved.get(name)
                if value is None:
                    self.add("condition", where, name, f"condition {condition!r} reads an input the task does not have")
                    continue
                want = ("bool" if literal in ("true", "false") else
                        "string" if literal[0] in "'\"" else "number")
                have = {"int": "number", "double": "number", "string": "string", "bool": "bool"}.get(cast or "", value.kind)
                if cast is None and value.kind == UNKNOWN:
                    continue
                if have != want:
                    self.add("condition", where, name, f"condition compares {value.label}, a {have.upper()}, with "
                                                       f"the {want.upper()} literal {literal} (never equal in CEL)")

    def check_runtime_params(self, where: str, executor: str, inputs: dict[str, Value]) -> None:
        container = self.executors.get(executor, {}).get("container", {})
        resources = container.get("resources", {})
        fields = {f"resources.{k}": v for k, v in resources.items() if isinstance(v, str)}
        fields.update({f"resources.accelerator.{k}": v for k, v in resources.get("accelerator", {}).items()
                       if isinstance(v, str)})
        fields["image"] = container.get("image", "")
        for field, text in fields.items():
            match = _PLACEHOLDER.match(text.strip())
            if not match:
                continue
            name = match.group(1)
            value = inputs.get(name)
            if value is None:
                self.add("runtime-param", where, name, f"{field} reads {name!r}, which is not an input of the task")
            elif value.kind not in ("string", UNKNOWN):
                self.add("runtime-param", where, name, f"{field} needs a STRING parameter but gets "
                                                       f"{value.kind.upper()} from {value.label} (read as \"\")")


def lint_spec(spec: dict) -> list[Problem]:
    """Every backend rule the pipeline spec ``spec`` (the first YAML document) breaks."""
    return _Linter(spec).run()


def lint_file(path: str | Path) -> list[Problem]:
    """:func:`lint_spec` of a compiled pipeline file (``mammo compile`` output)."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ValueError(f"{path}: not a compiled KFP pipeline (no 'root' in its first YAML document)")
    return lint_spec(docs[0])


def main(argv: list[str] | None = None) -> int:
    """``python -m mammo.pipelines.lint FILE.yaml``: print the problems; exit 1 if there are any."""
    args = sys.argv[1:] if argv is None else argv
    status = 0
    for path in args:
        problems = lint_file(path)
        for p in problems:
            print(f"{path}: {p}")
        print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        status |= bool(problems)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
