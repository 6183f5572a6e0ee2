"""The model library stays pure PyTorch: importable and testable without the pipeline's stack."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"ray", "wandb", "typer", "yaml", "pyarrow", "pipeline", "rich", "pydantic"}
AAE = Path(__file__).resolve().parent.parent / "aae"


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_aae_imports_no_ray_wandb_typer_yaml_or_pipeline() -> None:
    offenders = {
        str(path.relative_to(AAE.parent)): sorted(imported_roots(path) & FORBIDDEN) for path in AAE.rglob("*.py")
    }
    assert {file: mods for file, mods in offenders.items() if mods} == {}
    assert len(offenders) > 10  # the walk really saw the package


def test_every_source_folder_is_a_package_so_a_wheel_ships_it() -> None:
    # setuptools' package finder skips folders without __init__.py: `pip install .` (not -e) would lack them.
    root = AAE.parent
    folders = {path.parent for name in ("aae", "pipeline") for path in (root / name).rglob("*.py")}
    assert sorted(str(f.relative_to(root)) for f in folders if not (f / "__init__.py").exists()) == []


def test_evaluation_and_inference_do_not_import_the_training_loop_ray_or_wandb() -> None:
    import subprocess
    import sys

    script = ("import sys\nimport pipeline.stages.evaluate, pipeline.stages.visualize, pipeline.inference\n"
              "print(sorted(m for m in ('pipeline.loop', 'pipeline.cuda_graphs', 'ray', 'wandb') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
