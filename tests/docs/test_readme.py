"""The README's command list is the user's view of the command table: keep them equal."""

from __future__ import annotations

import pathlib
import re

import kvorum.commands  # noqa: F401  (importing the families registers every command)
from kvorum.commands.table import TABLE

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _listed_words() -> set[str]:
    text = README.read_text()
    section = text.split("## Supported commands", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\b[A-Z][A-Z_-]+\b", section))


def test_every_command_in_the_table_is_listed_in_the_readme():
    listed = _listed_words()
    missing = sorted(
        name.upper() for name, cmd in TABLE.items() if name.islower() and name.upper() not in listed
    )
    assert not missing, f"README.md does not list: {missing}"


def test_every_subcommand_is_listed_in_the_readme():
    listed = _listed_words()
    missing = sorted(
        f"{name.upper()} {sub.upper()}"
        for name, cmd in TABLE.items()
        if name.islower()
        for sub in cmd.subcommands
        if sub.upper() not in listed and sub != "help"
    )
    assert not missing, f"README.md does not list: {missing}"
