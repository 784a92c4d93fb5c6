"""Run every tests/consensus/testdata/*.txt script and compare with its transcript.

Set REWRITE=1 to write the current output back (then read the diff before committing).
"""

from __future__ import annotations

import pathlib

import pytest

import transcripts
from raft_harness import run_script

TESTDATA = pathlib.Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_interaction(path: pathlib.Path) -> None:
    transcripts.check(path, run_script)
