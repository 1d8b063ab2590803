"""Per-module mutation scores from the last `mutmut run`, counting behaviour only.

A mutant that only rewords a log line or an error message changes no behaviour a
user depends on; such survivors are listed apart and left out of the score. Every
other survivor, and every mutant no test runs, counts against it.

    mutmut run && python3 scripts/mutation_score.py [--survivors] [--min 90]

Reads `mutants/**/*.py.meta` (mutmut's results) and the mutated sources beside them.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # failed tests, timeouts, type check
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
LOG_OBJECTS = {"LOG", "log", "logger", "LOGGER"}
_MUTANT = re.compile(r"^(?P<func>.+)__mutmut_(?P<n>\d+)$")


@dataclass(frozen=True)
class Mutant:
    module: str
    name: str
    exit_code: int | None

    @property
    def killed(self) -> bool:
        return self.exit_code in KILLED


def _is_wording_call(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in LOG_METHODS:
        owner = func.value
        return isinstance(owner, ast.Name) and owner.id in LOG_OBJECTS
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name.endswith(("Error", "Exception"))


def _first_difference(orig: ast.AST, mutant: ast.AST, parents: list[ast.AST]
                      ) -> tuple[list[ast.AST], ast.AST | None] | None:
    """The chain of original nodes from the root down to the first place the mutant
    differs, and the mutant's node there (None when a list changed length)."""
    if type(orig) is not type(mutant):
        return parents + [orig], mutant
    for field, value in ast.iter_fields(orig):
        other = getattr(mutant, field, None)
        if isinstance(value, list):
            if not isinstance(other, list) or len(value) != len(other):
                return parents + [orig], None
            for a, b in zip(value, other):
                if isinstance(a, ast.AST):
                    found = _first_difference(a, b, parents + [orig])
                    if found:
                        return found
                elif a != b:
                    return parents + [orig], mutant
        elif isinstance(value, ast.AST):
            found = _first_difference(value, other, parents + [orig])
            if found:
                return found
        elif field not in ("ctx", "type_comment", "kind") and value != other:
            return parents + [orig], mutant
    return None


def _is_text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def wording_only(orig: ast.FunctionDef, mutant: ast.FunctionDef) -> bool:
    """True when the mutation only changes the text of a log line or of an exception's
    message: a string in the arguments of a log call or an exception's constructor
    rewritten into another string. Dropping the message, or changing anything else,
    counts."""
    mutant = ast.FunctionDef(**{**mutant.__dict__, "name": orig.name})
    found = _first_difference(orig, mutant, [])
    if not found:
        return False
    chain, replacement = found
    changed = chain[-1]
    in_text = _is_text(changed) and _is_text(replacement)
    if not in_text:
        return False
    for i, node in enumerate(chain[:-1]):
        if isinstance(node, ast.Call) and _is_wording_call(node) and chain[i + 1] is not node.func:
            return True
    return False


def _functions(source: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(source.read_text())
    found: dict[str, ast.FunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            found[node.name] = node
    return found


def collect(root: Path) -> dict[str, list[tuple[Mutant, bool]]]:
    by_module: dict[str, list[tuple[Mutant, bool]]] = defaultdict(list)
    for meta in sorted(root.glob("**/*.py.meta")):
        source = meta.with_suffix("")
        functions = _functions(source)
        module = ".".join(source.relative_to(root).with_suffix("").parts)
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            mutant = Mutant(module, key, code)
            local = key[len(module) + 1:]
            match = _MUTANT.match(local)
            harmless = False
            if not mutant.killed and match and local in functions:
                orig = functions.get(f"{match['func']}__mutmut_orig")
                harmless = orig is not None and wording_only(orig, functions[local])
            by_module[module].append((mutant, harmless))
    return by_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list the survivors that count")
    parser.add_argument("--harmless", action="store_true", help="list the wording-only survivors")
    parser.add_argument("--min", type=float, default=None, help="exit 1 when a module scores lower")
    args = parser.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"no {args.mutants}/: run `mutmut run` first", file=sys.stderr)
        return 2
    results = collect(args.mutants)
    print(f"{'module':34} {'mutants':>7} {'killed':>6} {'wording':>7} {'survive':>7} {'score':>6}")
    low = []
    for module, rows in sorted(results.items()):
        killed = sum(m.killed for m, _ in rows)
        wording = sum(h for _, h in rows)
        counted = len(rows) - wording
        score = 100.0 * killed / counted if counted else 100.0
        print(f"{module:34} {len(rows):7} {killed:7} {wording:7} {counted - killed:7} {score:5.1f}%")
        if args.min is not None and score < args.min:
            low.append(module)
        for mutant, harmless in rows:
            if mutant.killed:
                continue
            if (harmless and args.harmless) or (not harmless and args.survivors):
                state = "no tests" if mutant.exit_code in (5, 33) else "survived"
                print(f"    {mutant.name}  [{state}{', wording' if harmless else ''}]")
    if low:
        print(f"below {args.min}%: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
