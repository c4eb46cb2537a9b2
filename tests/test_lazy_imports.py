"""The packages that load torch only when one of their names is used (pixelwise, pixelwise.crf, pixelwise.data,
pixelwise.data.importers), so that ``pixelwise --help`` and a wrong flag answer at once."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY_PACKAGES = ["pixelwise", "pixelwise.crf", "pixelwise.data", "pixelwise.data.importers"]


def run_fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter (where nothing of pixelwise is imported yet)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_parser_is_built_without_torch_numpy_or_pillow():
    code = (
        "import sys\n"
        "from pixelwise.cli import build_parser\n"
        "parser = build_parser()\n"
        "for verb in (['--help'], ['train', '--help'], ['crf-search', '--help'], ['data', 'import', '--help']):\n"
        "    try:\n"
        "        parser.parse_args(verb)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'torchvision', 'timm') if m in sys.modules))\n"
    )
    out = run_fresh(code)
    assert out.strip().splitlines()[-1] == "[]"
    assert "coco-panoptic" in out and "--theta-alpha" in out  # the lists the parser reads


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves_and_is_listed(package):
    # dir() first, in a fresh interpreter: a name once read is kept in the package, and listed whatever __dir__ says
    code = (
        f"import {package} as m\n"
        "print(sorted(set(m.__all__) - set(dir(m))))\n"
        "print(len([n for n in m.__all__ if n not in vars(m)]))\n"
    )
    unlisted, lazy = run_fresh(code).strip().splitlines()[-2:]
    assert unlisted == "[]", unlisted
    assert int(lazy) > 0  # some names not read yet, so that dir() listed them through __dir__
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_exported_names_are_the_submodules_objects():
    from pixelwise.crf import CRFSettings, dense_crf
    from pixelwise.crf.mean_field import dense_crf as direct
    from pixelwise.crf.settings import CRFSettings as direct_settings
    from pixelwise.data import read_mask
    from pixelwise.data.io import read_mask as direct_read_mask

    assert dense_crf is direct and CRFSettings is direct_settings and read_mask is direct_read_mask


def test_every_import_format_has_its_reader():
    from pixelwise.data.importers import FORMATS, format_reader

    assert len(FORMATS) == 9
    for fmt in FORMATS:
        reader = format_reader(fmt)
        assert callable(reader) and reader.__name__ == "plan_" + fmt.replace("-", "_")


def test_submodules_are_attributes_as_before():
    """The packages imported their submodules eagerly, so ``pixelwise.data.io`` worked after ``import pixelwise``
    alone; it still does (a fresh interpreter: nothing imported them yet)."""
    code = (
        "import pixelwise, pixelwise.data, pixelwise.crf\n"
        "from pixelwise.crf.search import DEFAULT_GRID\n"
        "print(callable(pixelwise.models.build_model), callable(pixelwise.data.io.read_image),\n"
        "      callable(pixelwise.crf.mean_field.dense_crf),\n"
        "      pixelwise.crf.dense_crf is pixelwise.crf.mean_field.dense_crf,\n"
        "      'w1' in DEFAULT_GRID)\n"
    )
    assert run_fresh(code).split() == ["True"] * 5
