"""The README's Python examples run as written, and its first lines are the two commands a newcomer needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_starts_with_demo_and_test_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line.split("#")[0].strip() for line in lines[2:6] if line.startswith("make")]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("index", range(len(_BLOCKS)))
def test_readme_python_example_runs(index, capsys):
    torch.manual_seed(0)
    exec(compile(_BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    # Where an example shows what it prints (``# torch.Size(...)``), it prints exactly that.
    for shown in re.findall(r"#\s*(torch\.Size\(\[[^\]]*\]\))", _BLOCKS[index]):
        assert shown in out


def test_readme_has_examples():
    assert len(_BLOCKS) >= 2
