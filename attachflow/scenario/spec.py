"""The scenario file: its format, checked whole before anything runs, and the typed
values it becomes.

A file is one suite of scenarios (YAML)::

    suite: smoke
    scenarios:
      - name: attach-verify-detach
        matrix: {api: [attachments, legacy]}     # one run per combination
        volumes: {root: {size: 1}, data: {size: 1}}
        guests: {vm: {host: hosta, memory: 256, root: root}}
        steps:
          - boot: vm
          - attach: {volume: data, guest: vm}
          - write: {guest: vm, volume: data, pattern: a5}
          - expect: {volume: data, status: in-use, attached_to: [hosta]}
          - detach: {volume: data, guest: vm}

Every mistake is named with its line and key (``file:line: scenarios[0].steps[2]:
...``), all of them at once, so that a typo never starts a half-run: a step of an
unknown kind, a key a step does not take, a volume or guest no declaration names, a
fault outside the fixed set. Side effects: none (the file is read, nothing else).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from attachflow import errors

APIS = ("attachments", "legacy")
TRANSPORTS = ("native", "kernel")

# The faults a scenario can inject, each undone when its step ends. A fixed set: each
# needs its own, tested way in and out on real hosts.
FAULTS = {
    "storage-api-down": "the storage API refuses connections",
    "destination-libvirtd-stopped": "libvirtd is stopped on the migration's destination",
    "target-portal-unreachable": "the iSCSI target's portal cannot be reached",
    "destination-iscsid-stopped": "iscsid is stopped on the destination (kernel transport)",
}

VOLUME_STATUSES = ("available", "in-use", "attaching", "detaching", "reserved")

# \Z, not $: a pattern is searched with Python's re, where $ also admits a final newline
_NAME = {"type": "string", "pattern": r"^[a-z][a-z0-9-]{0,31}\Z"}
_HOST = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,254}\Z"}
_PATTERN = {"type": "string", "pattern": r"^[0-9a-fA-F]{2}\Z"}
_SIZE = {"type": "string", "pattern": r"^[0-9]+[KM]?\Z"}
_DEVICE = {"type": "string", "pattern": r"^vd[a-z]{1,2}\Z"}
# what a value that does not match each pattern is said to be not
_PATTERN_MEANS = {_NAME["pattern"]: "a valid name (lower case, digits and '-')",
                  _HOST["pattern"]: "a host name",
                  _PATTERN["pattern"]: "a byte in hex (two digits, e.g. a5)",
                  _SIZE["pattern"]: "a size (bytes, or a number with K or M)",
                  _DEVICE["pattern"]: "a virtio disk name (vda .. vdzz)"}


def _obj(required: Sequence[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_DISK = _obj(["volume", "guest"], volume=_NAME, guest=_NAME)
_DATA = _obj(["volume", "guest", "pattern"], volume=_NAME, guest=_NAME, pattern=_PATTERN,
             offset=_SIZE, length=_SIZE)

# Each step is a mapping of one key, its kind, to the step's arguments.
STEP_KINDS: dict[str, dict[str, Any]] = {
    "boot": _NAME,
    "attach": _obj(["volume", "guest"], volume=_NAME, guest=_NAME,
                   device=_DEVICE),
    "detach": _DISK,
    "write": _DATA,
    "verify": _DATA,
    "migrate": _obj(["guest", "to"], guest=_NAME, to=_HOST),
    "delete": _NAME,
    # around one step, not a repeat: a fault is injected once, and a failure expected once
    "fault": _obj(["name", "during"], name={"enum": sorted(FAULTS)},
                  during={"$ref": "#/$defs/single_step"}),
    "expect_failure": _obj(["step"], step={"$ref": "#/$defs/single_step"},
                           exit={"type": "integer", "minimum": 1, "maximum": 255},
                           message={"type": "string", "minLength": 1},
                           unchanged={"type": "boolean"}),
    "expect": _obj([], volume=_NAME, status={"enum": list(VOLUME_STATUSES)},
                   attachments={"type": "integer", "minimum": 0},
                   attached_to={"type": "array", "items": _HOST},
                   guest=_NAME, runs_on=_HOST,
                   disk={"enum": ["live", "persistent", "both", "absent"]},
                   sessions={"type": "object", "additionalProperties":
                             {"type": "integer", "minimum": 0}},
                   secrets={"type": "object", "additionalProperties":
                            {"type": "integer", "minimum": 0}}),
    "repeat": _obj(["times", "steps"], times={"type": "integer", "minimum": 1,
                                              "maximum": 10000},
                   steps={"type": "array", "minItems": 1,
                          "items": {"$ref": "#/$defs/step"}}),
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {"step": {"type": "object", "minProperties": 1, "maxProperties": 1,
                       "properties": STEP_KINDS, "additionalProperties": False},
              "single_step": {"type": "object", "minProperties": 1, "maxProperties": 1,
                              "properties": {k: v for k, v in STEP_KINDS.items()
                                             if k != "repeat"},
                              "additionalProperties": False}},
    **_obj(["suite", "scenarios"],
           suite=_NAME, description={"type": "string"},
           scenarios={"type": "array", "minItems": 1, "items": _obj(
               ["name", "steps"], name=_NAME, description={"type": "string"},
               kernel_nodes={"type": "boolean"},
               matrix=_obj([], api={"type": "array", "minItems": 1, "uniqueItems": True,
                                    "items": {"enum": list(APIS)}},
                           transport={"type": "array", "minItems": 1,
                                      "uniqueItems": True,
                                      "items": {"enum": list(TRANSPORTS)}}),
               volumes={"type": "object", "propertyNames": _NAME,
                        "additionalProperties": _obj(
                            ["size"], size={"type": "integer", "minimum": 1,
                                            "maximum": 1024},
                            type={"type": "string", "minLength": 1})},
               guests={"type": "object", "propertyNames": _NAME,
                       "additionalProperties": _obj(
                           ["host", "root"], host=_HOST, root=_NAME,
                           memory={"type": "integer", "minimum": 64, "maximum": 65536})},
               steps={"type": "array", "minItems": 1,
                      "items": {"$ref": "#/$defs/step"}})}),
}


# -- the typed values -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VolumeSpec:
    name: str
    size_gib: int
    volume_type: str | None


@dataclasses.dataclass(frozen=True)
class GuestSpec:
    name: str
    host: str
    root: str         # the name of the volume it boots from
    memory_mib: int


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its kind, its arguments as written, where it is written (for messages
    and results) and, for the kinds that hold steps, those steps."""
    kind: str
    args: Mapping[str, Any]
    where: str                   # file:line
    label: str                   # "attach data to vm", as results name the step
    inner: tuple["Step", ...] = ()


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario with one combination of its matrix: what a JUnit testcase is."""
    suite: str
    name: str                    # with the combination: "smoke[api=legacy]"
    description: str
    api: str
    transport: str
    kernel_nodes: bool
    volumes: tuple[VolumeSpec, ...]
    guests: tuple[GuestSpec, ...]
    steps: tuple[Step, ...]
    where: str


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    scenarios: tuple[Scenario, ...]


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 * 1024}


def size_bytes(text: str) -> int:
    """A size as the format writes it ("4096", "64K", "1M") in bytes."""
    unit = text[-1] if text[-1] in "KM" else ""
    return int(text[:len(text) - len(unit)]) * _SIZE_UNITS[unit]


# -- reading ----------------------------------------------------------------------------
class ScenarioFileError(errors.InputError):
    """A scenario file that cannot run; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else
                         f"{len(problems)} mistakes:\n  " + "\n  ".join(problems))


def load(path: str | Path) -> Suite:
    """The suite in ``path``, or ScenarioFileError naming every mistake in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ScenarioFileError([f"{path}: not UTF-8 text (byte {exc.start})"]) from exc
    return parse(text, str(path))


def parse(text: str, source: str) -> Suite:
    import yaml
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError as exc:
        raise ScenarioFileError([f"{source}: nested too deeply"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioFileError([f"{source}{line}: not valid YAML: {problem}"]) from exc
    if root is None:
        raise ScenarioFileError([f"{source}: the file is empty"])
    problems = _key_problems(root, source)
    if problems:  # the values cannot be built from such mappings
        raise ScenarioFileError(sorted(problems, key=_line_order))
    try:
        data = yaml.SafeLoader("").construct_document(root)  # the nodes, made values once
    except RecursionError as exc:
        raise ScenarioFileError([f"{source}: nested too deeply"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ScenarioFileError([f"{source}{line}: {getattr(exc, 'problem', exc)}"]) from exc
    problems = _schema_problems(data, root, source)
    problems += _reference_problems(data, root, source)
    if problems:
        raise ScenarioFileError(sorted(problems, key=_line_order))
    return _suite(data, root, source)


def _key_problems(root: Any, source: str) -> list[str]:
    """Every mapping key that is not a string, and every key given twice (YAML would
    keep the last and drop the first without a word)."""
    import yaml
    problems = []
    pending, seen_nodes = [root], 0
    while pending:
        node = pending.pop()
        seen_nodes += 1
        if seen_nodes > 100_000:
            return [f"{source}: too large to be a scenario file"]
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
                    problems.append(f"{source}:{line}: a key must be a name, not "
                                    f"{_short(key.value if isinstance(key, yaml.ScalarNode) else key.id)}")
                elif key.value in keys:
                    problems.append(f"{source}:{line}: '{key.value}' is given twice in "
                                    "one mapping")
                else:
                    keys.add(key.value)
                pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
    return problems


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _schema_problems(data: Any, root: Any, source: str) -> list[str]:
    import jsonschema
    validator = jsonschema.Draft202012Validator(SCHEMA)
    found = []
    for error in validator.iter_errors(data):
        # a step's own mistake, not "is not valid under" its whole definition
        for leaf in _leaves(error):
            found.extend(_problem(leaf, root, source))
    return sorted(set(found))


def _leaves(error) -> Iterator[Any]:
    if error.context:
        for sub in error.context:
            yield from _leaves(sub)
    else:
        yield error


def _problem(error, root: Any, source: str) -> list[str]:
    path = list(error.absolute_path)
    node = _node_at(root, path)
    where = _dotted(path) or "top level"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        what = "step" if set(allowed) <= set(STEP_KINDS) and "boot" in allowed else "key"
        found = []
        for key in sorted(set(error.instance) - set(allowed)):
            key_node = _key_node(node, key) or node
            close = _closest(key, allowed)
            hint = f" (did you mean '{close}'?)" if close else ""
            found.append(f"{source}:{key_node.start_mark.line + 1}: {where}: unknown {what} "
                         f"'{key}'{hint}; expected one of: {', '.join(allowed)}")
        if found:
            return found
    if error.validator == "required":
        message = f"missing {error.message.split(' is a required')[0]}"
    elif error.validator == "pattern":
        means = _PATTERN_MEANS.get(error.validator_value, f"matching {error.validator_value}")
        message = f"{_short(error.instance)} is not {means}"
    elif error.validator in ("maxProperties", "minProperties") and path and \
            isinstance(error.instance, dict):
        message = (f"a step is one kind of step, not {len(error.instance)}: "
                   f"{', '.join(map(str, error.instance))}")
    elif error.validator == "type":
        message = f"{_short(error.instance)} is not {_A_TYPE.get(str(error.validator_value), error.validator_value)}"
    else:
        message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
    line = node.start_mark.line + 1 if node is not None else 1
    return [f"{source}:{line}: {where}: {message}"]


_A_TYPE = {"string": "a string", "integer": "a whole number", "object": "a mapping",
           "array": "a list", "boolean": "true or false"}


def _line_order(problem: str) -> tuple[int, str]:
    match = re.match(r"^.*?:(\d+): ", problem)
    return (int(match.group(1)) if match else 0, problem)


def _closest(word: str, choices: Sequence[str]) -> str | None:
    import difflib
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _node_at(node: Any, path: Sequence[Any]) -> Any:
    """The YAML node at ``path`` (keys and indexes), or the deepest one found."""
    import yaml
    for part in path:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            return node
        node = nxt
    return node


def _key_node(node: Any, key: str) -> Any:
    import yaml
    if isinstance(node, yaml.MappingNode):
        return next((k for k, _ in node.value if k.value == key), None)
    return None


def _listed(steps: Sequence[Mapping[str, Any]], path: list[Any]
            ) -> list[tuple[Mapping[str, Any], list[Any]]]:
    """A list of steps as (step, its path in the file) pairs."""
    return [(step, [*path, i]) for i, step in enumerate(steps)]


def _children(kind: str, args: Any, path: list[Any]
              ) -> list[tuple[Mapping[str, Any], list[Any]]]:
    """The steps a step holds, with their paths: a repeat's list, or the one step a
    fault or an expected failure is around."""
    if kind == "repeat":
        return _listed(args["steps"], [*path, kind, "steps"])
    if kind in ("fault", "expect_failure"):
        key = "during" if kind == "fault" else "step"
        return [(args[key], [*path, kind, key])]
    return []


def _walk_steps(steps: Sequence[tuple[Mapping[str, Any], list[Any]]]
                ) -> Iterator[tuple[str, Any, list[Any]]]:
    """Every step, nested ones included, with its path in the file."""
    for step, path in steps:
        (kind, args), = step.items()
        yield kind, args, path
        yield from _walk_steps(_children(kind, args, path))


def _reference_problems(data: Mapping[str, Any], root: Any, source: str) -> list[str]:
    """Names a step uses that the scenario does not declare."""
    problems = []

    def say(path: list[Any], message: str) -> None:
        node = _node_at(root, path)
        problems.append(f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: {message}")

    seen_names: set[str] = set()
    scenarios = data.get("scenarios") if isinstance(data, dict) else None
    for s, scenario in enumerate(scenarios if isinstance(scenarios, list) else []):
        try:
            _scenario_references(scenario, ["scenarios", s], say, seen_names)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # malformed: the schema's problems name it
    return problems


def _scenario_references(scenario: Mapping[str, Any], base: list[Any], say,
                         seen_names: set[str]) -> None:
    if scenario["name"] in seen_names:
        say([*base, "name"], f"a second scenario named '{scenario['name']}'")
    seen_names.add(scenario["name"])
    volumes = set(scenario.get("volumes", {}))
    guests = scenario.get("guests", {})
    for name, guest in guests.items():
        if guest["root"] not in volumes:
            say([*base, "guests", name, "root"],
                f"no volume '{guest['root']}' is declared in volumes")
    for kind, args, path in _walk_steps(_listed(scenario["steps"], [*base, "steps"])):
        at = [*path, kind]
        if isinstance(args, str) and kind not in ("boot", "delete"):
            continue  # the schema names it: this kind takes a mapping
        refs = {"guest": args} if isinstance(args, str) else dict(args)
        for key, declared, what in (("volume", volumes, "volume"),
                                    ("guest", guests, "guest")):
            name = refs.get(key)
            if isinstance(name, str) and name not in declared:
                say([*at, key] if not isinstance(args, str) else at,
                    f"no {what} '{name}' is declared in {what}s")
        if kind == "expect" and isinstance(args, dict):
            if not set(args) - {"volume", "guest"}:
                say(at, "checks nothing: add what to expect (status, attachments, "
                        "attached_to, runs_on, disk, sessions, secrets)")
            of_volume = sorted({"status", "attachments", "attached_to", "sessions",
                                "secrets"} & set(args))
            if of_volume and "volume" not in args:
                say(at, f"{', '.join(of_volume)}: these are a volume's: name the volume")
            if {"runs_on", "disk"} & set(args) and "guest" not in args:
                say(at, "runs_on and disk are a guest's: name the guest")
            if "disk" in args and "volume" not in args:
                say(at, "disk names the volume's disk in the guest: name the volume")


# -- building the typed values ------------------------------------------------------------
def _label(kind: str, args: Any) -> str:
    if isinstance(args, str):
        return f"{kind} {args}"
    if kind == "attach":
        return f"attach {args['volume']} to {args['guest']}"
    if kind == "detach":
        return f"detach {args['volume']} from {args['guest']}"
    if kind in ("write", "verify"):
        return f"{kind} 0x{args['pattern'].lower()} on {args['volume']} in {args['guest']}"
    if kind == "migrate":
        return f"migrate {args['guest']} to {args['to']}"
    if kind == "fault":
        return f"with {args['name']}"
    if kind == "expect_failure":
        return "expect failure"
    if kind == "repeat":
        return f"repeat {args['times']} times"
    return "expect " + ", ".join(f"{k}={v}" for k, v in args.items())


def _steps(steps: Sequence[tuple[Mapping[str, Any], list[Any]]], root: Any,
           source: str) -> tuple[Step, ...]:
    out = []
    for step, path in steps:
        (kind, args), = step.items()
        line = _node_at(root, path).start_mark.line + 1
        inner = _steps(_children(kind, args, path), root, source)
        out.append(Step(kind, args if isinstance(args, dict) else {"guest": args},
                        f"{source}:{line}", _label(kind, args), inner))
    return tuple(out)


def _suite(data: Mapping[str, Any], root: Any, source: str) -> Suite:
    scenarios = []
    for s, raw in enumerate(data["scenarios"]):
        base = ["scenarios", s]
        matrix = raw.get("matrix", {})
        apis = matrix.get("api", ["attachments"])
        transports = matrix.get("transport", ["native"])
        steps = _steps(_listed(raw["steps"], [*base, "steps"]), root, source)
        volumes = tuple(VolumeSpec(n, v["size"], v.get("type"))
                        for n, v in raw.get("volumes", {}).items())
        guests = tuple(GuestSpec(n, g["host"], g["root"], g.get("memory", 256))
                       for n, g in raw.get("guests", {}).items())
        line = _node_at(root, base).start_mark.line + 1
        for api, transport in itertools.product(apis, transports):
            varied = [f"{k}={v}" for k, v, options in (("api", api, apis),
                                                      ("transport", transport, transports))
                      if len(options) > 1]
            name = raw["name"] + (f"[{','.join(varied)}]" if varied else "")
            scenarios.append(Scenario(
                suite=data["suite"], name=name, description=raw.get("description", ""),
                api=api, transport=transport, kernel_nodes=raw.get("kernel_nodes", False),
                volumes=volumes, guests=guests, steps=steps, where=f"{source}:{line}"))
    return Suite(data["suite"], Path(source), data.get("description", ""),
                 tuple(scenarios))


def count_steps(steps: Sequence[Step]) -> int:
    """How many steps a run's result lists, repeats unrolled (a fault or an expected
    failure is one step with the step it is around)."""
    total = 0
    for step in steps:
        if step.kind == "repeat":
            total += step.args["times"] * count_steps(step.inner)
        else:
            total += 1
    return total
