"""The README's first lines are the two commands a new user runs; CI runs the second."""

from __future__ import annotations

import re

from conftest import ROOT


def _first_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None and text.index("```sh") < 40, "the commands come first"
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_readme_starts_with_install_and_test_commands() -> None:
    install, tests = _first_commands()
    assert "pip install ." in install and install.endswith("jfwatch demo")
    assert tests.endswith("python -m pytest -n 2 --cov")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    _, tests = _first_commands()
    assert tests.rsplit("&& ", 1)[1] in ci.splitlines()
    assert "pip install -q -e '.[dev]'" in ci
