"""Hostile input to `dream3d batch`: a table of cases, each an input and the one-line message or
outcome it must give. Entries "run" through a stub that writes a finished run.json, so the
cases test what the batch records and says, not training."""
from __future__ import annotations

import json
import sqlite3
import sys
import warnings
from pathlib import Path

import pytest

from dream3d.batch import job as job_mod
from dream3d.batch.manifest import read_records
from dream3d.cli import main

LONG = "[" + "1, " * 3000 + "1]"


@pytest.fixture(autouse=True)
def fake_runs(monkeypatch):
    tried = []

    def fake(job, run_dir, on_start, on_step):
        tried.append(job.id)
        (run_dir / "run.json").write_text(json.dumps({"status": "done", "prompt": job.config["prompt"]}))

    monkeypatch.setattr(job_mod, "_generate", fake)
    return tried


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`dream3d ARGS` in this process: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["dream3d", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one `error:` line of a failed command; no traceback, no second line."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- entries of a prompt file

# (name, file name, content, [(state, error or None) per entry, in file order])
ENTRY_CASES = [
    ("bad seed before valid", "p.yaml", "- {prompt: a red cube, seed: abc}\n- a red cube\n",
     [("failed", "'seed' must be an integer, got 'abc'"), ("done", None)]),
    ("bad seed after valid", "p.yaml", "- a red cube\n- {prompt: a red cube, seed: abc}\n",
     [("done", None), ("failed", "'seed' must be an integer, got 'abc'")]),
    ("duplicate lines", "p.txt", "a red cube\na red cube\n", [("done", None), ("done", None)]),
    ("duplicate, one with a comment", "p.txt", "a red cube\na red cube  # again\n", [("done", None), ("done", None)]),
    ("duplicate entries with settings", "p.yaml", "- {prompt: a red cube, seed: 1}\n- {prompt: a red cube, seed: 1}\n",
     [("done", None), ("done", None)]),
    ("two bad entries alike", "p.yaml", "- {prompt: a red cube, seed: x}\n- {prompt: a red cube, seed: x}\n",
     [("failed", "'seed' must be an integer, got 'x'")] * 2),
    ("empty prompt", "p.yaml", "- {prompt: ''}\n- a red cube\n", [("failed", "the prompt is empty"), ("done", None)]),
    ("blank prompt", "p.yaml", "- {prompt: '   '}\n", [("failed", "the prompt is empty")]),
    ("prompt a number", "p.yaml", "- {prompt: 5}\n", [("failed", "'prompt' must be text, got 5")]),
    ("entry a number", "p.yaml", "- 42\n", [("failed", "an entry must be a prompt or a mapping, got 42")]),
    ("entry null", "p.yaml", "- null\n- a red cube\n",
     [("failed", "an entry must be a prompt or a mapping, got None"), ("done", None)]),
    ("entry a list", "p.yaml", "- [a red cube]\n", [("failed", "an entry must be a prompt or a mapping")]),
    ("unknown key", "p.yaml", "- {prompt: a red cube, colour: red}\n", [("failed", "unknown key 'colour'")]),
    ("steps zero", "p.yaml", "- {prompt: a red cube, steps: 0}\n", [("failed", "'steps' must be positive, got 0")]),
    ("seed a bool", "p.yaml", "- {prompt: a red cube, seed: true}\n", [("failed", "'seed' must be an integer")]),
    ("set a list", "p.yaml", "- {prompt: a red cube, set: [a=1]}\n", [("failed", "'set' must be a mapping")]),
    ("set key not a name", "p.yaml", "- {prompt: a red cube, set: {1: 2}}\n", [("failed", "'set' has a key")]),
    ("a huge value", "p.yaml", f"- {{prompt: a red cube, seed: {LONG}}}\n", [("failed", "'seed' must be an integer")]),
    ("unknown preset", "p.yaml", "- {prompt: a red cube, preset: nope}\n- a red cube\n",
     [("failed", "unknown preset 'nope'"), ("done", None)]),
    ("unknown override", "p.yaml", "- {prompt: a red cube, set: {train.bogus: 1}}\n",
     [("failed", "unknown config key 'train.bogus'")]),
    ("crlf line ends", "p.txt", "a red cube\r\na blue cube\r\n", [("done", None), ("done", None)]),
    ("byte-order mark", "p.txt", "\ufeffa red cube\n", [("done", None)]),
]


@pytest.mark.parametrize("name,filename,content,expected", ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_prompt_file_entries(tmp_path, monkeypatch, capsys, fake_runs, name, filename, content, expected):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8", newline="")
    out = tmp_path / "out"
    code, _, err = cli(monkeypatch, capsys, "batch", path, "--out", out, "--no-eval")
    records = read_records(out)
    assert len(records) == len(expected), records  # every entry its own record
    assert len({r["id"] for r in records}) == len(expected)
    for rec, (state, error) in zip(records, expected):
        assert rec["state"] == state, rec
        assert rec["source"].endswith(f":{rec['line']}")
        if error is None:
            assert rec["error"] is None
        else:
            assert error in rec["error"] and "\n" not in rec["error"] and len(rec["error"]) <= 300
            assert error in err  # said as the entry fails, on one line
    assert len(fake_runs) == sum(state == "done" for state, _ in expected)
    n_done = sum(s == "done" for s, _ in expected)
    assert f"{n_done} done, {len(expected) - n_done} failed, 0 not run" in err
    assert code == (0 if n_done == len(expected) else 1)
    if filename == "p.txt":
        assert records[0]["prompt"] == "a red cube"  # no BOM, no carriage return


def test_a_form_feed_does_not_shift_line_numbers(tmp_path, monkeypatch, capsys):
    path = tmp_path / "p.txt"
    path.write_text("a red cube\x0c\nblue\x0bcube\na green cube\n")
    cli(monkeypatch, capsys, "batch", path, "--out", tmp_path / "out", "--no-eval")
    assert [r["line"] for r in read_records(tmp_path / "out")] == [1, 2, 3]


# ---------------------------------------------------------------- prompt files that cannot be read at all

# (file name, content, the one-line message)
FILE_CASES = [
    ("p.yaml", b"prompts:\n  - [unclosed\n", "p.yaml:3: not valid YAML"),
    ("p.yaml", b"prompt: a red cube\n", "unknown top-level key 'prompt'"),
    ("p.yaml", b"just text\n", "a prompt file is a list of entries"),
    ("p.yaml", b"prompts: 5\n", "'prompts' must be a list"),
    ("p.yaml", b"defaults: [1]\nprompts: [a red cube]\n", "'defaults' must be a mapping"),
    ("p.yaml", b"defaults: {steps: -1}\nprompts: [a red cube]\n", "defaults: 'steps' must be positive"),
    ("p.yaml", b"- a red cube\n- \x00\n", "not valid YAML"),
    ("p.yaml", b"- !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ("p.yaml", b"- {prompt: a red cube, seed: 2001-13-45}\n", "not valid YAML"),
    ("p.txt", b"\xff\xfe\xfa not text\n", "cannot read the prompt file"),
    ("p.csv", b"a red cube\n", "ends in .txt, .yaml or .yml"),
    ("p.txt", b"# only a comment\n\n", "no prompts in"),
]


@pytest.mark.parametrize("filename,content,message", FILE_CASES, ids=[c[2][:30] for c in FILE_CASES])
def test_unreadable_prompt_files(tmp_path, monkeypatch, capsys, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    code, _, err = cli(monkeypatch, capsys, "batch", path, "--out", tmp_path / "out")
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- a batch folder's state, broken


def foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()


def malformed_batch_db(path: Path) -> None:
    from dream3d.batch.promptfile import parse_text
    from dream3d.batch.runner import BatchOptions, plan
    from dream3d.batch.store import BatchStore

    with BatchStore(path.parent, claims=True) as store:
        store.register(plan(parse_text("".join(f"a red cube {i}\n" for i in range(2000)), "x.txt"),
                            BatchOptions(out=path.parent), resolve=False))
    data = bytearray(path.read_bytes())
    data[4096 * 3:4096 * 6] = b"\xab" * (4096 * 3)  # pages of the table overwritten
    path.write_bytes(bytes(data))


# (name, file, content (bytes, or a function that writes it), the one-line message)
STATE_CASES = [
    ("json not json", "batch.json", b"not json {", "is not a batch record (not JSON"),
    ("json a list", "batch.json", b"[]", "a mapping with a list of 'entries' expected"),
    ("json entries a number", "batch.json", b'{"entries": 5}', "a mapping with a list of 'entries' expected"),
    ("json entry a number", "batch.json", b'{"entries": [5]}', "entry 1: an entry must be a mapping"),
    ("json id a path", "batch.json", b'{"entries": [{"id": "../../etc", "prompt": "x"}]}',
     "'id' must be a plain folder name"),
    ("json run_dir absolute", "batch.json", b'{"entries": [{"id": "a", "prompt": "x", "run_dir": "/tmp"}]}',
     "'run_dir' must be a plain folder name"),
    ("json unknown state", "batch.json", b'{"entries": [{"id": "a", "prompt": "x", "state": "<b>ok</b>"}]}',
     "unknown state"),
    ("json prompt a number", "batch.json", b'{"entries": [{"id": "a", "prompt": 5}]}', "'prompt' has the wrong type"),
    ("json history of numbers", "batch.json", b'{"entries": [{"id": "a", "prompt": "x", "history": [1]}]}',
     "'history' must be a list of mappings"),
    ("json same id twice", "batch.json", b'{"entries": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}',
     "appears twice"),
    ("json newer version", "batch.json", b'{"version": 99, "entries": []}', "unknown batch record version"),
    ("json not utf-8", "batch.json", b"\xff\xfe\xfa{}", "cannot read"),
    ("db garbage", "batch.db", b"garbage!" * 512, "is not a readable batch database (file is not a database)"),
    ("db of another program", "batch.db", foreign_sqlite, "is a SQLite file of something else"),
    ("db pages overwritten", "batch.db", malformed_batch_db, "is not a readable batch database"),
]


def write_state(folder: Path, filename: str, content) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(folder / filename)
    else:
        (folder / filename).write_bytes(content)


@pytest.mark.parametrize("name,filename,content,message", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_a_broken_batch_folder(tmp_path, monkeypatch, capsys, fake_runs, name, filename, content, message):
    out = tmp_path / "out"
    write_state(out, filename, content)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    code, _, err = cli(monkeypatch, capsys, "batch", prompts, "--out", out, "--no-eval")
    assert code == 2 and message in error_line(err)
    assert fake_runs == []  # nothing ran on a state it could not read
    code, _, err = cli(monkeypatch, capsys, "batch", "status", out)
    assert code == 2 and message in error_line(err)
    code, _, err = cli(monkeypatch, capsys, "batch", "status", out, "--json")
    assert code == 2 and message in error_line(err)
    with warnings.catch_warnings(record=True) as caught:  # the gallery leaves the batch out, no traceback
        warnings.simplefilter("always")
        from dream3d.gallery import collect

        collect(out)
    assert not (tmp_path / "etc").exists()
    if filename == "batch.db":
        assert any(message in str(w.message) for w in caught)


def test_status_of_a_folder_that_is_no_batch(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "batch", "status", tmp_path)
    assert code == 2 and "is not a batch folder" in error_line(err)
    code, _, err = cli(monkeypatch, capsys, "batch", "status", tmp_path / "missing")
    assert code == 2 and "no batch folder at" in error_line(err)


def test_a_broken_database_with_its_export_beside_it_can_be_recovered(tmp_path, monkeypatch, capsys, fake_runs):
    """The message says what to do, and doing it works: the export is taken up again."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    assert cli(monkeypatch, capsys, "batch", prompts, "--out", out, "--no-eval")[0] == 0
    (out / "batch.db").write_bytes(b"garbage!" * 512)
    code, _, err = cli(monkeypatch, capsys, "batch", "status", out)
    assert code == 2 and "move it away and the next run takes up batch.json" in error_line(err)
    (out / "batch.db").rename(tmp_path / "broken.db")
    code, _, err = cli(monkeypatch, capsys, "batch", prompts, "--out", out, "--no-eval")
    assert code == 0 and len(fake_runs) == 1  # found done in the export: not run again
    assert read_records(out)[0]["attempts"] == 1
