"""The run registry: round trip, concurrent writers, migration of an older schema, files it must not touch."""
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.registry import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, ReadOnlyRunError, Registry, RegistryError

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


def test_a_session_sees_its_own_runs_and_the_command_lines_and_changes_only_its_own(tmp_path):
    with Registry(tmp_path / "registry.sqlite") as reg:
        cli = reg.add_run("distill", {"who": "cli"})
        alice, bob = reg.view("app:alice"), reg.view("app:bob")
        mine, theirs = alice.add_run("app", {"who": "alice"}), bob.add_run("app", {"who": "bob"})
        assert reg.get(mine)["owner"] == "app:alice" and reg.get(cli)["owner"] == "cli"
        assert [r["id"] for r in alice.runs()] == [cli, mine] and [r["id"] for r in bob.runs()] == [cli, theirs]
        with pytest.raises(KeyError, match="not among this session's runs"):
            alice.get(theirs)   # another browser's run is not even visible
        for change in (lambda: alice.delete(theirs), lambda: alice.update(theirs, pinned=True)):
            with pytest.raises(KeyError):
                change()
        for change in (lambda: alice.delete(cli), lambda: alice.update(cli, tags=["x"]),
                       lambda: alice.add_evaluation(cli, "hard", "convnet", 1, "val", [0], [0.5])):
            with pytest.raises(ReadOnlyRunError, match="read-only"):
                change()
        alice.update(mine, pinned=True)
        alice.delete(mine)
        assert [r["id"] for r in reg.runs()] == [cli, theirs] and not reg.get(cli)["pinned"]
        with pytest.raises(ValueError, match="command line's owner"):
            reg.view("cli")


def test_app_runs_recorded_before_owners_existed_belong_to_no_session(tmp_path):
    path = tmp_path / "registry.sqlite"
    with sqlite3.connect(path) as db:   # a version-2 file
        for step in MIGRATIONS[:2]:
            db.executescript(step)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO runs (created, kind, config) VALUES (1.0, 'app', '{}'), (2.0, 'bench', '{}')")
    with Registry(path) as reg:
        assert [r["owner"] for r in reg.runs()] == ["app:unknown", "cli"]
        assert [r["kind"] for r in reg.view("app:alice").runs()] == ["bench"]


def test_a_registry_with_a_damaged_page_is_refused_when_opened_and_left_alone(tmp_path):
    path = tmp_path / "registry.sqlite"
    with Registry(path) as reg:
        for i in range(300):
            reg.add_run("distill", {"i": i, "padding": "x" * 200}, commit="")
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[5 * page:6 * page] = bytes(range(256)) * (page // 256)   # garbage over a data page; the header is intact
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="not a usable run registry"):
        Registry(path)
    assert path.read_bytes() == bytes(data)


def test_a_registry_that_cannot_be_written_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from core.cli.main import main

    def read_only(self):
        raise sqlite3.OperationalError("attempt to write a readonly database")
    monkeypatch.setattr(Registry, "_open", read_only)
    code = main(["distill", "--ipc", "1", "--classes", "0", "--method", "random", "--out", str(tmp_path / "set"),
                 "--registry", str(tmp_path / "registry.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "readonly database" in err and err.startswith("error:")
    assert not (tmp_path / "set").exists()


def test_a_registry_failing_after_the_export_is_a_warning_and_the_export_stays(tmp_path, monkeypatch, capsys):
    from core.cli.main import main

    def fails(self, *args, **kwargs):
        raise sqlite3.DatabaseError("database disk image is malformed")
    monkeypatch.setattr(Registry, "add_run", fails)
    out = tmp_path / "set"
    code = main(["distill", "--ipc", "1", "--classes", "0", "--method", "random", "--out", str(out),
                 "--registry", str(tmp_path / "registry.sqlite")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: the export is complete" in err and "Traceback" not in err
    assert (out / "manifest.json").is_file()
