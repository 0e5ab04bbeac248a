"""The README's "adding a method" example is the real, tested file, not a copy that can drift."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_adding_a_method_shows_the_real_knorm_file():
    readme = section("Adding a method")
    (python,) = code_blocks(readme, "python")
    source = (ROOT / "baselines" / "knorm.py").read_text()
    # Every line of the example appears in the file, in order (the file adds docstrings).
    position = 0
    for line in python.strip().splitlines():
        found = source.find(line, position)
        assert found != -1, f"README line not in baselines/knorm.py (in this order): {line!r}"
        position = found + len(line)
    (yaml,) = code_blocks(readme, "yaml")
    settings = [line for line in yaml.splitlines() if line and not line.startswith("#")]
    real = (ROOT / "conf" / "method" / "knorm.yaml").read_text().splitlines()
    assert settings == [line for line in real if line and not line.startswith("#")]


def test_the_example_method_is_under_test():
    from tests.methods_under_test import METHOD_CASES

    assert "knorm" in {case.name for case in METHOD_CASES}


def test_the_drop_in_example_is_the_executed_docstring():
    import textwrap

    import adore.core.dropin as dropin

    docstring = textwrap.dedent(dropin.__doc__.split("::\n", 1)[1].split("\nA cache serves", 1)[0]).strip()
    (example,) = code_blocks(section("Model families"), "python")
    assert example.strip() == docstring
