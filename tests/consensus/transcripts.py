"""Data-driven transcript tests: a script of commands and the exact output it must produce.

A transcript file holds commands, each followed by the output recorded for it;
`check` replays the commands and compares the whole file. REWRITE=1 in the
environment regenerates the file instead, to be read as a diff and committed
only once understood.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable


def check(path: pathlib.Path, run_script: Callable[[str], str]) -> None:
    text = path.read_text()
    got = run_script(text)
    if os.environ.get("REWRITE"):
        path.write_text(got)
        return
    assert got == text, f"{path.name}: transcript differs (REWRITE=1 regenerates it)"
