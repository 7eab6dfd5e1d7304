"""The package's shape, read from its own imports: what keeps the next kind of run cheap to add."""

import ast
import os

from conftest import PROJECT

PACKAGE = os.path.join(PROJECT, "imts_flask")
ROOT_MODULES = {"__init__", "errors", "fsio", "procs", "settings", "state"}  # the factory and leaves
LEAVES = ROOT_MODULES - {"__init__"}


def _modules():
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, PROJECT)[: -len(".py")].replace(os.sep, ".")
                yield dotted.removesuffix(".__init__"), path


MODULES = dict(_modules())


def _imports(module, path):
    """(imported module, names) of each import in a module, relative ones made absolute."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            yield target, [alias.name for alias in node.names]


def _room(module):
    """A module's room: its subpackage under imts_flask, or the module itself at the root."""
    return ".".join(module.split(".")[:2])


def test_no_module_is_over_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 450}
    assert long == {}


def test_no_module_imports_another_modules_private_name():
    private = [
        (module, target, name)
        for module, path in MODULES.items()
        for target, names in _imports(module, path)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target.startswith("imts_flask")
    ]
    assert private == []


def test_the_package_root_holds_only_the_factory_and_leaves():
    at_root = {name[: -len(".py")] for name in os.listdir(PACKAGE) if name.endswith(".py")}
    assert at_root <= ROOT_MODULES
    for leaf in LEAVES:
        module = f"imts_flask.{leaf}"
        inside = {t for t, _ in _imports(module, MODULES[module]) if t.startswith("imts_flask")}
        assert inside <= {f"imts_flask.{other}" for other in LEAVES}, (leaf, inside)


def test_no_two_rooms_import_each_other_by_any_road():
    arrows = {}
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            if target.startswith("imts_flask.") and _room(target) != _room(module):
                arrows.setdefault(_room(module), set()).add(_room(target))

    def reaches(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in arrows.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(room for room in arrows if room in reaches(room))
    assert circles == []


TESTS = os.path.join(PROJECT, "tests")
# Folders across the package, of other languages' clients, or of data.
NOT_MIRRORS = {"e2e", "java", "node", "prometheus", "records", "__pycache__"}


def test_the_tests_mirror_the_package():
    folders = {d for d in os.listdir(TESTS) if os.path.isdir(os.path.join(TESTS, d))} - NOT_MIRRORS
    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert folders and folders <= subpackages, folders - subpackages


def test_no_test_module_imports_another():
    # Helpers every test uses live in conftest.py (and harness.py for services run as deployed).
    offenders = []
    for folder, _dirs, files in os.walk(TESTS):
        for name in files:
            if name.startswith("test_") and name.endswith(".py"):
                path = os.path.join(folder, name)
                tree = ast.parse(open(path, encoding="utf-8").read(), path)
                for node in ast.walk(tree):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
                    offenders += [(name, n) for n in names if n.startswith("test_")]
    assert offenders == []
