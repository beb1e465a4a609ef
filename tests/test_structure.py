"""The floors of the project, and the size limits that keep each piece readable.

Floors, bottom to top (README, "Architecture"): ``layers`` and ``data``; ``core``; ``sync``;
``engine`` (the driver); ``run`` (launchers). A module imports only from its own floor or
below, lazy imports (inside functions) included, and no two modules import each other, even
through others. Functions stay within 60 lines and classes within 250 in the packages.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"layers": 0, "data": 0, "core": 1, "sync": 2, "engine": 3, "run": 4}
PACKAGES = sorted(FLOORS)
LIMITS = {"function": 60, "class": 250}


def module_name(path, root=ROOT):
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(root=ROOT, packages=PACKAGES):
    """{module: {(imported project module, line)}} over every import of the packages, those
    inside functions too."""
    modules = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    found = {}
    for name, path in modules.items():
        edges = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges.add((target, node.lineno))
    return found


def upward(imports, floors=FLOORS):
    return [f"{module} (line {line}) imports {target}, a floor above it"
            for module, targets in imports.items() for target, line in targets
            if floors[target.split(".")[0]] > floors[module.split(".")[0]]]


def cycles(imports):
    """Each group of modules that reach each other through imports (Tarjan's algorithm)."""
    graph = {m: sorted({t for t, _ in ts}) for m, ts in imports.items()}
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def too_long(root=ROOT, packages=("core", "data", "engine", "layers", "sync")):
    problems = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                kind = "class" if isinstance(node, ast.ClassDef) else "function" if isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
                if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                    problems.append(f"{path.relative_to(root)}:{node.lineno} {kind} {node.name}: "
                                    f"{node.end_lineno - node.lineno + 1} lines (at most "
                                    f"{LIMITS[kind]})")
    return problems


def test_every_import_goes_down_or_across():
    assert upward(project_imports()) == []


def test_no_modules_import_each_other():
    assert cycles(project_imports()) == []


def test_functions_and_classes_stay_within_their_limits():
    assert too_long() == []


def test_the_checks_see_what_they_are_for(tmp_path):
    """A lazy upward import and a cycle through a third module are caught, and so is a long
    function."""
    for pkg in ("layers", "core"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "layers" / "a.py").write_text("def f():\n    from core.b import g\n")
    (tmp_path / "core" / "b.py").write_text("from core.c import h\n")
    (tmp_path / "core" / "c.py").write_text("import core.b\n\n\ndef h():\n" +
                                            "    x = 1\n" * 60)
    imports = project_imports(tmp_path, ["layers", "core"])
    assert upward(imports, {"layers": 0, "core": 1}) == [
        "layers.a (line 2) imports core.b, a floor above it"]
    assert cycles(imports) == [["core.b", "core.c"]]
    assert too_long(tmp_path, ["core"]) == [
        "core/c.py:4 function h: 61 lines (at most 60)"]


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS)
