"""The operator (and the trainer's spec parsing) must not pull in torch or ray."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import finetune_operator

HEAVY = ("torch", "ray", "deepspeed", "transformers", "peft", "datasets")


def imported_heavy_modules(*modules: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return [m for m in result.stdout.strip().split(",") if m]


def test_no_operator_module_imports_torch_or_ray():
    modules = [
        f"finetune_operator.{info.name}"
        for info in pkgutil.iter_modules(finetune_operator.__path__)
    ]
    assert "finetune_operator.api" in modules
    assert imported_heavy_modules("finetune_operator", *modules) == []


def test_parsing_a_job_file_imports_no_torch():
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from finetune_operator.validation import load_job_file\n"
        "load_job_file(Path('examples/quickstart.yaml'))\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
