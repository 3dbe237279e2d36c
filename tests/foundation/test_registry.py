"""The run registry: round trip, concurrent writers, migration of an older schema, files it must not touch."""
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.registry import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[2]


def test_runs_and_evaluations_round_trip(tmp_path):
    path = tmp_path / "runs" / "registry.sqlite"
    with Registry(path) as reg:
        run = reg.add_run("distill", {"method": "pgfm", "ipc": 10}, {"mode_coverage": 0.6, "bad": float("nan")},
                          {"total_s": 1.5}, config_hash="abc", export_path="out/set", commit="deadbeef")
        reg.add_evaluation(run, "hard-dsa", "convnet", 300, "test", [0, 1], [0.75, 0.77], [60.0, 61.0])
        reg.update(run, pinned=True, tags=["b", "a", "a"], name="first")
        other = reg.add_run("bench", {"method": "random"})
        got = reg.get(run)
        assert got["config"] == {"method": "pgfm", "ipc": 10} and got["metrics"]["bad"] is None
        assert got["pinned"] and got["tags"] == ["a", "b"] and got["git_commit"] == "deadbeef"
        assert got["evaluations"][0]["accuracies"] == [0.75, 0.77]
        assert got["evaluations"][0]["accuracy_mean"] == pytest.approx(0.76)
        assert [r["id"] for r in reg.runs(kind="bench")] == [other] and reg.runs(config_hash="abc")[0]["id"] == run
        reg.delete(run)
        assert [r["id"] for r in reg.runs()] == [other]
        assert not reg._db.execute("SELECT count(*) FROM evaluations").fetchone()[0]   # cascaded
        with pytest.raises(KeyError, match="not in the registry"):
            reg.get(run)
        with pytest.raises(ValueError, match="one accuracy per seed"):
            reg.add_evaluation(other, "hard", "convnet", 1, "test", [0, 1], [0.5])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


WRITER = """
import sys
from core.registry import Registry
with Registry(sys.argv[1], timeout_s=60) as reg:
    for i in range(40):
        run = reg.add_run("distill", {"writer": sys.argv[2], "i": i}, commit="")
        reg.add_evaluation(run, "hard", "convnet", 1, "test", [0], [0.5])
"""


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    path = tmp_path / "registry.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name], cwd=ROOT) for name in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    with Registry(path) as reg:
        runs = reg.runs()
    assert len(runs) == 80 and all(len(r["evaluations"]) == 1 for r in runs)
    assert sorted((r["config"]["writer"], r["config"]["i"]) for r in runs) == sorted((w, i) for w in "ab" for i in range(40))


def test_an_older_schema_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "registry.sqlite"
    with sqlite3.connect(path) as db:   # a version-1 file, as the first schema wrote it
        db.executescript(MIGRATIONS[0])
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO runs (created, kind, config, metrics) VALUES (1.0, 'distill', '{\"ipc\": 1}', '{}')")
    with Registry(path) as reg:
        (run,) = reg.runs()
        assert run["config"] == {"ipc": 1} and run["tags"] == [] and run["evaluations"] == []
        reg.add_evaluation(run["id"], "hard", "convnet", 1, "test", [0], [0.5])   # the new table exists
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("kind", ["not sqlite", "foreign sqlite", "newer", "folder"])
def test_files_it_did_not_write_are_refused_and_left_alone(tmp_path, kind):
    path = tmp_path / "registry.sqlite"
    if kind == "not sqlite":
        path.write_bytes(b"my notes, not a database\n" * 10)
    elif kind == "folder":
        path.mkdir()
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE mine (x)")
            if kind == "newer":
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = None if kind == "folder" else path.read_bytes()
    message = {"not sqlite": "not a SQLite file", "foreign sqlite": "another application", "newer": "newer than",
               "folder": "is a folder"}[kind]
    with pytest.raises(RegistryError, match=message):
        Registry(path)
    if before is not None:
        assert path.read_bytes() == before
