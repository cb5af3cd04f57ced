"""The README is a front page: short, its option table generated from the code, its links live."""

from __future__ import annotations

import re
from pathlib import Path

from ray_valkey_spill.config import option_table_markdown

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_option_table_is_the_codes():
    table = "\n".join(line for line in README.splitlines() if line.startswith("| `")
                      or line in ("| option | default | meaning |", "|---|---|---|"))
    assert option_table_markdown() in README, (
        "README's option table differs from config.OPTIONS: paste `ray-valkey-spill options`")
    assert table.count("| `") >= len(option_table_markdown().splitlines()) - 2


def test_readme_is_a_front_page_with_the_two_commands():
    assert len(README.encode()) <= 15 * 1024
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "ray-valkey-spill stress" in first_block and ".venv/bin/pytest" in first_block


def test_every_relative_link_in_the_docs_resolves():
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
