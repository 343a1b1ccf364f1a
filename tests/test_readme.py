"""README's generated tables match the code (GEMPI tuples and GRO instances come from the configs)."""

from suite import readme


def test_readme_generated_blocks_are_current():
    text = (readme.ROOT / "README.md").read_text()
    assert readme.render(text) == text, "README.md is stale: run `.venv/bin/python -m suite.readme` and commit"
