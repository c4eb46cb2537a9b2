"""The package's layering: data, models, losses, metrics, crf, inference, engine, CLI; nothing below imports
from above, and no module imports itself back through another (no import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pixelwise"

# lowest first; a module may import from its own layer or below
LAYERS = [
    {"errors", "fileio", "device", "cpu_threads", "argmax", "visualize", "lazy_imports", "argument_types"},
    {"data"},
    {"models"},
    {"losses"},
    {"metrics"},
    {"crf"},
    {"inference"},
    {"config"},
    {"engine", "export", "report"},
    {"cli", "__main__", "__init__", "serve"},
]


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"pixelwise.{top} is in no layer of tests/test_layout.py: add it")


def _imports(path: Path) -> list[str]:
    """Absolute names of the pixelwise modules that ``path`` imports."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1]  # the package a relative import starts from
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("pixelwise"):
                if node.module is None or name == "pixelwise":  # from . import x / from pixelwise import x
                    for a in node.names:
                        sub = PACKAGE.parent.joinpath(*name.split("."), a.name)
                        is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                        out.append(f"{name}.{a.name}" if is_module else name)
                else:
                    out.append(name)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("pixelwise")]
    return out


def test_nothing_below_imports_from_above():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        here = _layer(_top(module))
        for imported in _imports(path):
            if imported == "pixelwise" or _top(imported) == _top(module):
                continue
            if _layer(_top(imported)) > here:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_module_imports_on_its_own():
    """Importing any module first (a fresh interpreter) works: no cycle depends on import order."""
    import subprocess
    import sys

    modules = [".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))]
    modules = [m.removesuffix(".__init__") for m in modules if not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    for k in [k for k in sys.modules if k.startswith('pixelwise')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_public_names_the_readme_documents():
    import pixelwise
    from pixelwise.config import load_config
    from pixelwise.crf import dense_crf
    from pixelwise.engine import evaluate_checkpoint, train
    from pixelwise.losses import build_loss
    from pixelwise.metrics import ConfusionMatrix

    assert all(callable(f) for f in (pixelwise.build_model, load_config, dense_crf, train, evaluate_checkpoint))
    assert callable(build_loss) and ConfusionMatrix(2).num_classes == 2
