"""Every third-party module the project imports is declared in setup.py.

A fresh machine installs only what setup.py declares, so an undeclared import passes on a
machine where someone installed the package by hand and fails everywhere else (matplotlib in
``engine/report.py`` once did exactly that). Two rules:

- every import in the project's Python files (packages, ``bench/``, ``tests/``) is provided by a
  requirement in ``install_requires`` or in some extra;
- an import at the top of a package module (``engine``, ``layers``, ``sync``, ``data``, ``run``)
  runs on ``import``, so its provider must be in ``install_requires`` itself.

A module is provided by a requirement when an installed distribution of that name ships it
(``importlib.metadata``), when the names agree (``torch`` and ``torch>=2.1``), or, for the GPU
packages that no CPU machine installs, through ``NOT_INSTALLED_HERE``.
"""
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "layers", "sync", "data", "run")
SCANNED = PACKAGES + ("bench", "tests")
# import name -> distributions that provide it, for extras a CPU machine cannot install
NOT_INSTALLED_HERE = {"cupy": {"cupy-cuda12x", "cupy-cuda11x", "cupy"},
                      "cupyx": {"cupy-cuda12x", "cupy-cuda11x", "cupy"}}


def canonical(name):
    """PEP 503's normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(setup_py):
    """{group: {distribution, ...}} of setup.py's ``setup(...)``: "install" and each extra."""
    call = next(node for node in ast.walk(ast.parse(setup_py.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    words = {k.arg: ast.literal_eval(k.value) for k in call.keywords
             if k.arg in ("install_requires", "extras_require")}
    groups = {"install": words.get("install_requires", []), **words.get("extras_require", {})}
    name = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    return {group: {canonical(name.match(r)[1]) for r in reqs} for group, reqs in groups.items()}


def imports(path):
    """[(top-level module, line, at module level?)] of one file's absolute imports."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        found += [(n.split(".")[0], node.lineno, id(node) in top) for n in names]
    return sorted(found, key=lambda item: item[1])


def providers(module, installed):
    """The canonical names of the distributions that may provide ``module``."""
    return ({canonical(d) for d in installed.get(module, ())} | {canonical(module)}
            | NOT_INSTALLED_HERE.get(module, set()))


def undeclared(root, folders=SCANNED, packages=PACKAGES):
    """One line per import that no declared requirement provides, naming the file and module."""
    groups = declared(root / "setup.py")
    anywhere = set().union(*groups.values())
    local = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in root.glob("*.py")}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    installed = importlib.metadata.packages_distributions()
    problems = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            siblings = {p.stem for p in path.parent.glob("*.py")}   # bench/step.py: torch_models
            for module, line, at_top in imports(path):
                if module in stdlib | local | siblings:
                    continue
                where = f"{path.relative_to(root)}:{line}"
                wanted = providers(module, installed)
                if not wanted & anywhere:
                    problems.append(f"{where} imports {module}, which no requirement in "
                                    f"setup.py provides (install_requires or an extra)")
                elif at_top and folder in packages and not wanted & groups["install"]:
                    problems.append(f"{where} imports {module} when the module loads, but only an "
                                    f"extra provides it: declare it in install_requires")
    return problems


def test_every_import_of_the_project_is_declared_in_setup_py():
    assert undeclared(ROOT) == []


def test_the_check_names_the_file_and_the_module_it_misses(tmp_path):
    (tmp_path / "setup.py").write_text(
        'setup(name="x", install_requires=["numpy>=2.0"], extras_require={"plot": ["tqdm"]})\n')
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "draw.py").write_text(
        "import json\nimport numpy as np\nfrom engine import other\nimport tqdm\n\n"
        "def draw():\n    import matplotlib.pyplot\n    import tqdm\n")
    assert undeclared(tmp_path, folders=("engine",), packages=("engine",)) == [
        "engine/draw.py:4 imports tqdm when the module loads, but only an extra provides it: "
        "declare it in install_requires",
        "engine/draw.py:7 imports matplotlib, which no requirement in setup.py provides "
        "(install_requires or an extra)"]
