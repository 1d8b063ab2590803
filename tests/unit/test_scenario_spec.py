"""Scenario files: every mistake named with its line and key before anything runs, the
matrix expanded into one scenario per combination, the shipped files valid."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from attachflow.cli import cli
from attachflow.scenario import spec

SHIPPED = sorted((Path(__file__).parents[2] / "scenarios").glob("*.yaml"))

GOOD = """\
suite: s
scenarios:
  - name: one
    matrix: {api: [attachments, legacy], transport: [native]}
    volumes:
      root: {size: 1}
      data: {size: 2, type: fast}
    guests:
      vm: {host: hosta, root: root}
    steps:
      - boot: vm
      - attach: {volume: data, guest: vm}
      - repeat:
          times: 3
          steps:
            - write: {guest: vm, volume: data, pattern: a5}
            - verify: {guest: vm, volume: data, pattern: A5}
      - fault:
          name: destination-libvirtd-stopped
          during:
            expect_failure:
              step: {migrate: {guest: vm, to: hostb}}
              exit: 1
              unchanged: true
      - expect: {volume: data, status: in-use, attachments: 1, attached_to: [hosta]}
      - detach: {volume: data, guest: vm}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(spec.ScenarioFileError) as caught:
        spec.parse(textwrap.dedent(text), "f.yaml")
    return caught.value.problems


def mutated(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_scenario_file_is_valid(path):
    suite = spec.load(path)
    assert suite.scenarios and all(sc.steps for sc in suite.scenarios)


def test_there_are_shipped_scenarios():
    assert SHIPPED


def test_a_valid_file_becomes_one_scenario_per_combination():
    suite = spec.parse(GOOD, "f.yaml")
    assert [(sc.name, sc.api, sc.transport) for sc in suite.scenarios] == [
        ("one[api=attachments]", "attachments", "native"),
        ("one[api=legacy]", "legacy", "native")]
    sc = suite.scenarios[0]
    assert sc.volumes == (spec.VolumeSpec("root", 1, None), spec.VolumeSpec("data", 2, "fast"))
    assert sc.guests == (spec.GuestSpec("vm", "hosta", "root", 256),)
    assert [s.label for s in sc.steps] == [
        "boot vm", "attach data to vm", "repeat 3 times",
        "with destination-libvirtd-stopped",
        "expect volume=data, status=in-use, attachments=1, attached_to=['hosta']",
        "detach data from vm"]
    assert sc.steps[1].where == "f.yaml:12"
    assert [s.label for s in sc.steps[2].inner] == ["write 0xa5 on data in vm",
                                                    "verify 0xa5 on data in vm"]
    assert sc.steps[3].inner[0].inner[0].label == "migrate vm to hostb"
    # boot, attach, 3 x 2, the fault (around its expected failure), expect, detach
    assert spec.count_steps(sc.steps) == 2 + 6 + 1 + 2


@pytest.mark.parametrize("old,new,line,expected", [
    ("- attach:", "- atach:", 12,
     "scenarios[0].steps[1]: unknown step 'atach' (did you mean 'attach'?)"),
    ("detach: {volume: data, guest: vm}", "detach: {volume: data, guest: vm, force: 1}", 26,
     "scenarios[0].steps[5].detach: unknown key 'force'; expected one of: guest, volume"),
    ("verify: {guest: vm, volume: data, pattern: A5}", "verify: {guest: vm, volume: data}",
     17, "scenarios[0].steps[2].repeat.steps[1].verify: missing 'pattern'"),
    ("pattern: a5", "pattern: zz", 16, "'zz' is not a byte in hex"),
    ("name: destination-libvirtd-stopped", "name: libvirtd-down", 19,
     "scenarios[0].steps[3].fault.name: 'libvirtd-down' is not one of"),
    ("attach: {volume: data,", "attach: {volume: dta,", 12,
     "scenarios[0].steps[1].attach.volume: no volume 'dta' is declared in volumes"),
    ("- boot: vm", "- boot: wm", 11,
     "scenarios[0].steps[0].boot: no guest 'wm' is declared in guests"),
    ("root: root}", "root: rot}", 9,
     "scenarios[0].guests.vm.root: no volume 'rot' is declared in volumes"),
    ("times: 3", "times: 0", 14, "scenarios[0].steps[2].repeat.times: 0 is less than"),
    ("exit: 1", "exit: one", 23, "'one' is not a whole number"),
    ("status: in-use", "status: attached", 25, "'attached' is not one of"),
    ("api: [attachments, legacy]", "api: [attachments, nova]", 4,
     "'nova' is not one of ['attachments', 'legacy']"),
    ("{volume: data, status: in-use,", "{status: in-use,", 25,
     "attached_to, attachments, status: these are a volume's: name the volume"),
    ("{volume: data, status: in-use, attachments: 1,", "{sessions: {hosta: 1},", 25,
     "attached_to, sessions: these are a volume's: name the volume"),
])
def test_each_mistake_is_named_with_its_line_and_key(old, new, line, expected):
    found = problems(mutated(old, new))
    assert len(found) == 1, found
    assert found[0].startswith(f"f.yaml:{line}: ") and expected in found[0], found


def test_every_mistake_of_a_file_is_named_at_once_in_line_order():
    text = mutated("- attach:", "- atach:").replace("pattern: a5", "pattern: zz")
    text = text.replace("root: root}", "root: rot}")
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["9", "12", "16"], found


@pytest.mark.parametrize("text,expected", [
    ("", "f.yaml: the file is empty"),
    ("suite: s\nscenarios: [\n", "f.yaml:3: not valid YAML"),
    ("suite: s\n", "f.yaml:1: top level: missing 'scenarios'"),
    ("suite: S!\nscenarios: []\n", "'S!' is not a valid name"),
    (GOOD + GOOD[GOOD.index("  - name: one"):], "a second scenario named 'one'"),
])
def test_a_file_that_is_not_a_suite_says_why(text, expected):
    found = problems(text)
    assert any(expected in p for p in found), found


def test_a_step_is_one_kind():
    found = problems(mutated("- boot: vm", "- {boot: vm, delete: vm}"))
    assert found == ["f.yaml:11: scenarios[0].steps[0]: a step is one kind of step, not 2: "
                     "boot, delete"], found


# -- the command line ---------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(cli, ["scenario", *args])


def test_validate_names_every_mistake_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(mutated("- attach:", "- atach:"))
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = run("validate", str(good), str(bad))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:12: scenarios[0].steps[1]: unknown step 'atach'")
    assert lines[-1] == "attachflow: error: 1 mistake in 1 of 2 files; nothing was run"
    assert result.stdout == ""


def test_validate_and_list_report_what_would_run(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = run("validate", str(good), "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [{"file": str(good), "suite": "s", "scenarios": 2,
                                          "steps": 22, "result": "valid"}]
    result = run("list", str(good), "-f", "json")
    rows = json.loads(result.stdout)
    assert [(r["scenario"], r["api"], r["steps"], r["where"]) for r in rows] == [
        ("one[api=attachments]", "attachments", 11, f"{good}:3"),
        ("one[api=legacy]", "legacy", 11, f"{good}:3")]


def test_without_files_the_scenarios_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("list")
    assert result.exit_code == 2
    assert "no FILE given and no ./scenarios/*.yaml here" in result.stderr
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "a.yaml").write_text(GOOD)
    assert run("list").exit_code == 0


def test_an_unreadable_file_is_one_line():
    result = run("validate", "/nonexistent/x.yaml")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "/nonexistent/x.yaml: cannot read: No such file or directory"


@pytest.mark.parametrize("old,new,expected", [
    ("- boot: vm", "- {1: vm}", "f.yaml:11: a key must be a name, not '1'"),
    ("- boot: vm", "- {~: vm}", "f.yaml:11: a key must be a name, not '~'"),
    ("attach: {volume: data, guest: vm}", "attach: {volume: data, volume: root, guest: vm}",
     "f.yaml:12: 'volume' is given twice in one mapping"),
])
def test_keys_that_are_not_names_or_are_given_twice_are_mistakes(old, new, expected):
    assert problems(mutated(old, new)) == [expected]


def test_a_second_steps_list_does_not_silently_replace_the_first():
    text = GOOD + "    steps:\n      - boot: vm\n"
    assert problems(text) == ["f.yaml:27: 'steps' is given twice in one mapping"]


def test_a_file_that_is_not_utf8_or_nested_too_deeply_is_one_mistake(tmp_path):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"suite: s\xff\n")
    with pytest.raises(spec.ScenarioFileError, match=r"b.yaml: not UTF-8 text \(byte 8\)"):
        spec.load(binary)
    deep = "[" * 3000 + "]" * 3000
    assert problems(deep) == ["f.yaml: nested too deeply"]


def test_a_step_inside_a_fault_is_named_at_its_own_line():
    text = mutated("during:\n            expect_failure:\n              step: {migrate: {guest: vm, to: hostb}}\n              exit: 1\n              unchanged: true",
                   "during:\n            attach: {volume: dta, guest: vm}")
    assert problems(text) == ["f.yaml:21: scenarios[0].steps[3].fault.during.attach.volume: "
                              "no volume 'dta' is declared in volumes"]


def test_a_repeat_is_not_a_step_a_fault_is_around():
    text = mutated("step: {migrate: {guest: vm, to: hostb}}",
                   "step: {repeat: {times: 2, steps: [{boot: vm}]}}")
    found = problems(text)
    assert len(found) == 1 and "unknown step 'repeat'" in found[0], found


@pytest.mark.parametrize("old,new,expected", [
    ("attach: {volume: data, guest: vm}", "attach: {volume: data, guest: vm, device: sdb}",
     "'sdb' is not a virtio disk name (vda .. vdzz)"),
    ("pattern: a5}", "pattern: a5, offset: 1G}", "'1G' is not a size"),
    ("- boot: vm", '- boot: "vm\\n"', "is not a valid name"),
    ("host: hosta", 'host: " "', "' ' is not a host name"),
])
def test_a_value_of_the_wrong_shape_says_what_it_should_be(old, new, expected):
    found = problems(mutated(old, new))
    assert any(expected in p for p in found), found


def test_every_unknown_key_is_named():
    found = problems(mutated("detach: {volume: data, guest: vm}",
                             "detach: {volume: data, guest: vm, force: 1, wait: 2}"))
    assert [p.split("unknown key ")[1].split(";")[0] for p in found] == ["'force'", "'wait'"]


def test_an_expectation_that_checks_nothing_is_a_mistake():
    found = problems(mutated("- expect: {volume: data, status: in-use, attachments: 1, "
                             "attached_to: [hosta]}", "- expect: {volume: data}"))
    assert len(found) == 1 and "checks nothing" in found[0], found


def test_a_kind_that_takes_a_mapping_given_a_name_is_one_mistake():
    found = problems(mutated("attach: {volume: data, guest: vm}", "attach: data"))
    assert found == ["f.yaml:12: scenarios[0].steps[1].attach: 'data' is not a mapping"]


def test_the_reference_documents_every_step_fault_and_expectation():
    reference = (Path(__file__).parents[2] / "scenarios" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_-]+)` \|", reference, re.MULTILINE))
    expectations = set(spec.STEP_KINDS["expect"]["properties"]) - {"volume", "guest"}
    assert set(spec.STEP_KINDS) | set(spec.FAULTS) | expectations <= documented, (
        (set(spec.STEP_KINDS) | set(spec.FAULTS) | expectations) - documented)
