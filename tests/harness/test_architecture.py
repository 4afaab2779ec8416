"""The import graph of the project's own packages: no cycles, no module importing a package above it, and
reference/'s subpackages layered in the order its map (``reference/__init__.py``) lists them; and the
library's wide records (more than four fields) built by keyword.

Every import counts, at module level or inside a function, ``TYPE_CHECKING`` blocks included: a lazy import
hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import reference

ROOT = Path(reference.__file__).resolve().parent.parent
PACKAGES = ("handmade", "reference", "benchmarks", "equivalence_tests")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a.b import c`` imports ``a.b.c`` if it is a module,
    else ``a.b``; a package named in an import counts as imported)."""
    known = modules(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in map(resolve, targets) if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a.b.c -> a.b': each import of a package that contains the importing module."""
    return [f"{m} -> {t}" for m, targets in graph.items() for t in sorted(targets) if m.startswith(t + ".")]


def layers() -> list[str]:
    """reference/'s subpackages in the order its map lists them (lowest first)."""
    return re.findall(r"^    (\w+)/ ", reference.__doc__ or "", flags=re.M)


def layering_violations(graph: dict[str, set[str]], order: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}

    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == "reference" and len(parts) > 2 and parts[1] in rank else None

    bad = []
    for module, targets in graph.items():
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if mine and theirs and rank[theirs] > rank[mine]:
                bad.append(f"{module} ({mine}/) imports {target} ({theirs}/, listed below it)")
    return bad


def test_the_project_has_no_import_cycles() -> None:
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_no_module_imports_a_package_above_it() -> None:
    assert upward_imports(import_graph(ROOT, PACKAGES)) == []


def test_reference_subpackages_import_only_those_listed_above_them_in_its_map() -> None:
    order = layers()
    on_disk = sorted(p.name for p in (ROOT / "reference").iterdir() if (p / "__init__.py").exists())
    assert sorted(order) == on_disk, "reference/__init__.py's map lists every subpackage once"
    assert layering_violations(import_graph(ROOT, PACKAGES), order) == []


def test_handmade_imports_torch_and_itself_only() -> None:
    graph = import_graph(ROOT, PACKAGES)
    outside = {t for m, ts in graph.items() if m.split(".")[0] == "handmade" for t in ts
               if t.split(".")[0] != "handmade"}
    assert outside == set()


def test_the_library_never_imports_the_suite() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert {t for m, ts in graph.items() if m.startswith("reference") for t in ts
            if t.startswith("equivalence_tests")} == set()


def test_every_level_has_its_property_written_out_by_name() -> None:
    import equivalence_tests.test_components as suite
    from reference.levels.registry import LEVELS

    written = {name for name in vars(suite) if name.startswith("test_") and name.endswith("_matches_torch")}
    assert written == {f"test_{level}_matches_torch" for level in LEVELS}
    assert all(getattr(suite, f"test_{level}_matches_torch").__name__ == f"test_{level}_matches_torch"
               for level in LEVELS)


def wide_positional_records(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Dataclasses of more than four fields that may be built positionally (past their first field)."""
    found = []
    for name, path in modules(root, packages).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not any("dataclass" in d for d in decorators) or any("kw_only=True" in d for d in decorators):
                continue
            fields = [n for n in node.body
                      if isinstance(n, ast.AnnAssign) and "ClassVar" not in ast.unparse(n.annotation)]
            positional = next((i for i, n in enumerate(fields) if ast.unparse(n.annotation) == "KW_ONLY"), len(fields))
            if len(fields) > 4 and positional > 1:
                found.append(f"{name}.{node.name}")
    return found


def test_records_wider_than_four_fields_are_built_by_keyword() -> None:
    assert wide_positional_records(ROOT, ("reference", "benchmarks")) == []


def test_a_wide_positional_record_is_found(tmp_path: Path) -> None:
    fields = "".join(f"    f{i}: int = 0\n" for i in range(5))
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": f"from dataclasses import dataclass\n@dataclass\nclass Wide:\n{fields}",
        "pkg/b.py": f"from dataclasses import dataclass\n@dataclass(kw_only=True)\nclass Named:\n{fields}",
    })
    assert wide_positional_records(tmp_path, ("pkg",)) == ["pkg.a.Wide"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_planted_cycle_is_found_lazy_imports_included(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import c\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "import pkg.a\n",
    })
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_a_planted_upward_import_and_layer_inversion_are_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "reference/__init__.py": "",
        "reference/low/__init__.py": "",
        "reference/low/x.py": "from reference.high import y\n",
        "reference/high/__init__.py": "helper = 1\n",
        "reference/high/y.py": "from . import helper\n",
    })
    graph = import_graph(tmp_path, ("reference",))
    assert upward_imports(graph) == ["reference.high.y -> reference.high"]
    assert layering_violations(graph, ["low", "high"]) == [
        "reference.low.x (low/) imports reference.high.y (high/, listed below it)"]
