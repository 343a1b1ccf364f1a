"""Generated blocks of README.md, so tables that come from the code never drift from it.

A block is the text between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`. Rewrite them
with `python -m suite.readme`; `tests/test_readme.py` fails while a block is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def _methods() -> str:
    from suite.questions.theory import methods_markdown

    return methods_markdown()


BLOCKS: dict[str, Callable[[], str]] = {"methods": _methods}


def render(text: str) -> str:
    """`text` with every generated block replaced by its current content."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no generated block {name!r}")
        body = make().strip() + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def main() -> int:
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
        print(f"updated {path}")
    else:
        print(f"{path} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
