"""The layers point one way: schemas <- pipelines <- wvm (the model package) <- flows / CLI.

Read from the source with `ast`, so an import inside a function counts as much as one at the
top. The one sanctioned way for pipelines to reach the model package is the handler registry
`pipelines.inference.HANDLERS` ("module:Class" strings imported when a run starts).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The plug-in point: where "wvm...:Class" strings may name the model package's handlers.
SANCTIONED_REGISTRY = ("pipelines/inference.py", "HANDLERS")
CLI = "wvm/cli.py"  # the CLI layer, though it lives in the wvm package
IMPORT_PATH = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*$")
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _package_of(path: Path) -> list[str]:
    """The package a module's relative imports start from (a package's own for __init__.py)."""
    return list(path.relative_to(ROOT).parts[:-1])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file: static ones anywhere (top level, functions,
    TYPE_CHECKING blocks), relative ones resolved, and importlib / __import__ calls with a
    literal module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in DYNAMIC_IMPORTS and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def registry_strings(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name of the variable it is assigned under) of every "module:Class" string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    owner: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            for sub in ast.walk(node.value) if node.value else ():
                if names:
                    owner[id(sub)] = names[0]
    return [
        (node.lineno, m["module"], owner.get(id(node)))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := IMPORT_PATH.match(node.value))
    ]


def violations(packages: tuple[str, ...], forbidden: set[str], skip: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for package in packages:
        for path in sources(package):
            if rel(path) in skip:
                continue
            bad += [f"{rel(path)}:{line}: imports {module}" for line, module in sorted(imports(path)) if module.split(".")[0] in forbidden]
    return bad


def test_the_import_scanner_sees_imports_in_functions_relative_and_dynamic(tmp_path, monkeypatch):
    # The checks below can fail: the scanner finds each way of importing.
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "pipelines" / "stages" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import numpy\n"
        "def f():\n"
        "    from wvm.handlers import LocalHandler\n"
        "    import flows.nightly\n"
        "    importlib.import_module('wvm.serving.client')\n"
        "from .. import weights\n"
        "REG = {'x': 'wvm.model:WorldValueModel'}\n"
    )
    assert sorted(imports(module)) == [(1, "numpy"), (3, "wvm.handlers"), (4, "flows.nightly"), (5, "wvm.serving.client"), (6, "pipelines")]
    assert violations(("pipelines",), {"wvm", "flows"}) == [
        "pipelines/stages/x.py:3: imports wvm.handlers",
        "pipelines/stages/x.py:4: imports flows.nightly",
        "pipelines/stages/x.py:5: imports wvm.serving.client",
    ]
    assert registry_strings(module) == [(7, "wvm.model", "REG")]


def test_schemas_import_no_other_layer():
    assert violations(("schemas",), {"pipelines", "wvm", "flows"}) == []


def test_pipelines_import_neither_the_model_package_nor_flows():
    assert violations(("pipelines",), {"wvm", "flows"}) == []


def test_the_model_package_imports_no_flows_only_the_cli_may():
    assert violations(("wvm",), {"flows"}, skip=(CLI,)) == []


def test_the_handler_registry_is_the_one_place_pipelines_name_the_model_package():
    named = [
        (rel(path), line, module, owner)
        for package in ("schemas", "pipelines")
        for path in sources(package)
        for line, module, owner in registry_strings(path)
        if module.split(".")[0] in {"wvm", "flows"}
    ]
    assert named, "the handler registry moved: update SANCTIONED_REGISTRY"
    assert [n for n in named if (n[0], n[3]) != SANCTIONED_REGISTRY] == []
    assert all(module.split(".")[0] == "wvm" for _, _, module, _ in named)


def test_every_registered_handler_resolves_and_has_the_interface_pipelines_use():
    from pipelines.errors import WvmError
    from pipelines.inference import HANDLERS, ValueModelHandler, handler_class

    methods = [n for n, v in vars(ValueModelHandler).items() if callable(v) and (not n.startswith("_") or n in ("__enter__", "__exit__"))]
    assert {"load", "answer_batch", "close", "__enter__", "__exit__"} <= set(methods)
    for backend in HANDLERS:
        cls = handler_class(backend)
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        assert missing == [], f"{backend}: {cls.__qualname__} lacks {missing}"
        attributes = {"version", "checkpoint_hash", "geometry"}
        declared = {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}
        assert attributes <= declared, f"{backend}: {cls.__qualname__} does not declare {attributes - declared}"
    with pytest.raises(WvmError, match="unknown model backend 'onnx'"):
        handler_class("onnx")


def test_importing_the_pipelines_loads_neither_torch_nor_the_model_package():
    code = (
        "import sys\n"
        "import pipelines.stages.relabel, pipelines.relabel, pipelines.ingest\n"
        "from pipelines.inference import ModelSpec\n"
        "ModelSpec(backend='triton')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'wvm', 'flows'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
