"""The README's example runs as written, its test command is what CI runs, and the CLI works offline."""

from __future__ import annotations

import re
from pathlib import Path

from vit_sae_hooks.cli import main

from helpers import FIXTURES

ROOT = Path(__file__).parent.parent


def test_readme_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert len(example.strip().splitlines()) <= 12
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([2, 17, 512])" in printed and "tensor(" in printed


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert "constraints-cpu.txt" in commands[0] and "constraints-cpu.txt" in commands[1]
    assert commands[0].endswith("vit-sae demo")


def test_inspect_lists_hooks_with_shapes(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"blocks\.0\.attn\.hook_pattern\s+\[2, 4, 17, 17\]", out)
    assert main(["inspect", str(FIXTURES / "open_clip_tiny_gelu"), "--all", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"blocks\.1\.hook_resid_post\s+\[1, 17, 64\]", out) and "output: (1, 24)" in out
