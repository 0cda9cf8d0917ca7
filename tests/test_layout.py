"""The layout's rules: what may import torch, who may import whom, and how long a module may be."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import sslmri_core
from tests.conftest import ROOT

PACKAGE = ROOT / "sslmri_core"
MAX_MODULE_LINES = 500
MAX_CLI_LINES = 450


def _modules(prefix: str) -> list[str]:
    package = __import__(prefix, fromlist=["_"])
    return [m.name for m in pkgutil.walk_packages(package.__path__, prefix + ".") if ".migrations" not in m.name]


def test_data_and_store_never_import_torch() -> None:
    names = [*_modules("sslmri_core.data"), *_modules("sslmri_core.store"), "sslmri_core.paths",
             "sslmri_core.config", "sslmri_core.errors", "sslmri_core.explain.overlay"]
    code = f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_the_trainers_never_import_each_other_and_nobody_imports_private_names() -> None:
    for path in [*PACKAGE.rglob("*.py"), ROOT / "cli.py"]:
        if "migrations" in path.parts:
            continue
        for module, names in _imports(path):
            if not module.startswith("sslmri_core"):
                continue
            assert not [n for n in names if n.startswith("_")], f"{path}: private import from {module}"
            if path.name == "pretrain.py":
                assert "finetune" not in module, f"{path} imports {module}"
            if path.name == "finetune.py":
                assert not module.endswith(".pretrain"), f"{path} imports {module}"


def test_orm_classes_stay_in_the_store() -> None:
    for path in [*PACKAGE.rglob("*.py"), ROOT / "cli.py", *(ROOT / "dashboard").rglob("*.py")]:
        if "store" in path.relative_to(ROOT).parts[:2]:
            continue
        for module, _ in _imports(path):
            assert module != "sslmri_core.store.schema", f"{path} imports the ORM schema"


def test_no_module_is_over_500_lines_and_cli_is_thin() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts
            and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long
    assert len((ROOT / "cli.py").read_text().splitlines()) <= MAX_CLI_LINES
    assert Path(sslmri_core.__file__).parent == PACKAGE  # the checked tree is the imported one
