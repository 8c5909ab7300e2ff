"""A run records the code version it started with, not whatever the checkout holds when it writes."""

from __future__ import annotations

import json

import pytest

from pairsmith.distill import runstate
from pairsmith.errors import FailedPrecondition


def test_state_and_report_keep_the_code_version_of_the_start(tmp_path, monkeypatch):
    first = {"version": "0.1.0", "commit": "a" * 40, "dirty": False, "diff_sha256": None}
    monkeypatch.setattr(runstate, "code_version", lambda: first)
    st = runstate.RunState(tmp_path / "r", {"a": 1}, resume=False, kind="k")
    # a commit (or checkout) in the worktree while the run is in progress: the running process still
    # executes the code it imported, so the run must keep recording `first`
    later = {**first, "commit": "b" * 40}
    monkeypatch.setattr(runstate, "code_version", lambda: later)
    st.mark("fit", score=1.0)
    assert json.loads((tmp_path / "r" / "state.json").read_text())["code"] == first
    assert st.code == first  # what report.json records (dse, train cross-encoder, trans-encoder)
    # and a resume under the later code is refused, since the state still names the code that ran
    with pytest.raises(
        FailedPrecondition, match="written by commit aaaaaaaaaaaa, but this is commit bbbbbbbbbbbb"
    ):
        runstate.RunState(tmp_path / "r", {"a": 1}, resume=True, kind="k")
