"""The README's "Use a trained model" examples run as written, on small runs trained here under the names they use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import load_split
from tests.helpers import trained_run

README = Path(__file__).resolve().parent.parent / "README.md"
EXPERIMENTS = {"semisup": ("data.labels=100",), "dimred-2d": ("data.labels=100",), "supervised": ()}


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_the_use_a_trained_model_examples_run_as_written(synthetic_dataset, tmp_path) -> None:
    blocks = code_blocks(section("Use a trained model"))
    assert [kind for kind, _ in blocks] == ["bash", "python", "python"]
    used = set(re.findall(r"runs/([a-z0-9-]+?)-\d{8}-\d{6}", "".join(code for _, code in blocks)))
    assert used == set(EXPERIMENTS)
    for name in re.findall(r"runs/[a-z0-9-]+-\d{8}-\d{6}", "".join(code for _, code in blocks)):
        experiment = re.match(r"runs/([a-z0-9-]+?)-\d{8}-\d{6}", name).group(1)
        if not (tmp_path / name).exists():
            trained_run(synthetic_dataset, tmp_path / name, experiment, *EXPERIMENTS[experiment])
    digits = load_split(synthetic_dataset["data.dataset"], "test", Path(synthetic_dataset["data.data_dir"]))[0]
    np.save(tmp_path / "my_digits.npy", digits[:100])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    for kind, code in blocks:
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
    for made in ("my_digits.parquet", "my_digits_map.png", "samples_by_digit.png"):
        assert (tmp_path / made).stat().st_size > 0, made


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for page in sorted((README.parent / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, page.name
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", text):  # no link into nothing
        assert (README.parent / target).exists(), target
