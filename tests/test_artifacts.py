"""The versioned-artifact helpers of autoseg.artifacts, and the four artifacts that use them."""

import json
import os
import re

import pytest

from autoseg.artifacts import build_versioned, check_schema, load_artifact, write_json
from autoseg.errors import AutosegError


def test_check_schema_names_the_file_the_versions_and_what_to_do():
    check_schema({"schema_version": 3}, 3, "x.json", "re-run it")
    with pytest.raises(AutosegError, match=r"^x\.json: schema_version 2, expected 3; re-run it$"):
        check_schema({"schema_version": 2}, 3, "x.json", "re-run it")
    with pytest.raises(AutosegError, match=r"^x\.json: schema_version None, expected 3; re-run it$"):
        check_schema({}, 3, "x.json", "re-run it")
    with pytest.raises(AutosegError, match=r"^x\.json: expected a JSON object, got list; re-run it$"):
        check_schema([1, 2], 3, "x.json", "re-run it")


def test_build_versioned_turns_a_missing_or_mistyped_field_into_one_line():
    def build(data):
        return int(data["count"])

    def kwargs(where="thing"):
        return dict(expected_version=1, where=where, what="thing", what_to_do="re-run it")

    assert build_versioned({"schema_version": 1, "count": "4"}, build, **kwargs()) == 4
    with pytest.raises(AutosegError, match=r"^a\.json: malformed thing \('count'\)$"):
        build_versioned({"schema_version": 1}, build, **kwargs("a.json"))
    with pytest.raises(AutosegError, match=r"^thing: malformed thing \(invalid literal"):
        build_versioned({"schema_version": 1, "count": "four"}, build, **kwargs())
    with pytest.raises(AutosegError, match="schema_version 0, expected 1"):
        build_versioned({"schema_version": 0, "count": 4}, build, **kwargs())


def test_load_artifact_reads_a_file_or_the_standard_file_of_a_folder(tmp_path):
    def from_json(data, where):
        return data["value"], where

    write_json(tmp_path / "thing.json", {"value": 7})
    assert load_artifact(tmp_path / "thing.json", from_json) == (7, str(tmp_path / "thing.json"))
    assert load_artifact(tmp_path, from_json, "thing.json") == (7, str(tmp_path / "thing.json"))
    with pytest.raises(AutosegError, match=r"other\.json: file not found"):
        load_artifact(tmp_path, from_json, "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(AutosegError, match=r"broken\.json: not valid JSON"):
        load_artifact(tmp_path / "broken.json", from_json)


def _artifacts():
    """(class, its standard file name or None, a current file's JSON, the advice of a stale one)."""
    from autoseg.evaluation import EvaluationSummary
    from autoseg.fingerprint import Fingerprint
    from autoseg.postprocessing import PostprocessingDecision
    from autoseg.selection import Candidate, SelectionResult
    from autoseg.statistics import StatisticsTable

    return [
        (PostprocessingDecision, "postprocessing.json", PostprocessingDecision(True, [1]).to_json(),
         "re-run the postprocessing decision"),
        (SelectionResult, "find_best.json",
         SelectionResult(["2d"], [Candidate(["2d"], 0.5, {"1": 0.5}, "2d/crossval")], ["0"]).to_json(),
         "re-run `autoseg find-best`"),
        (EvaluationSummary, "summary.json", EvaluationSummary.from_cases([], {"1": "organ"}, ["1"]).to_json(),
         "re-run the evaluation"),
        (Fingerprint, None, None, "re-run `autoseg fingerprint`"),
        (StatisticsTable, "statistics.json", StatisticsTable({"1": "organ"}, ["CT"], []).to_json(),
         "predict again with --statistics"),
    ]


@pytest.mark.parametrize("cls, file_name, current, advice", _artifacts(), ids=lambda v: getattr(v, "__name__", ""))
def test_every_versioned_artifact_rejects_another_version_naming_its_file(tmp_path, cls, file_name, current, advice):
    path = tmp_path / (file_name or "fingerprint.json")
    path.write_text(json.dumps({"schema_version": 99}))
    stale = rf"^{re.escape(str(path))}: schema_version 99, expected \d+; {re.escape(advice)}$"
    with pytest.raises(AutosegError, match=stale):
        cls.load(path)
    if current is not None:
        write_json(path, current)
        assert cls.load(tmp_path).to_json() == current  # found by its folder too
        write_json(path, {k: v for k, v in current.items() if k not in ("chosen", "per_case", "whole_foreground", "cases")})
        with pytest.raises(AutosegError, match=rf"^{re.escape(str(path))}: malformed "):
            cls.load(path)


def test_temporaries_of_a_killed_writer_are_removed_and_a_live_writers_kept(tmp_path):
    import subprocess
    import sys

    from autoseg.artifacts import remove_abandoned_temporaries

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(finished.stdout), os.getpid()
    dead = [tmp_path / f".case.nii.gz.{dead_pid}.0123456789ab.tmp",
            tmp_path / f".case.nii.gz.{dead_pid}.0123456789ab.tmp.nii.gz"]
    live = tmp_path / f".other.json.{live_pid}.abcdefabcdef.tmp"
    unrelated = tmp_path / ".hidden.tmp"
    for path in (*dead, live, unrelated):
        path.write_bytes(b"half")
    assert remove_abandoned_temporaries(tmp_path) == sorted(dead)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name])
