"""Hostile input through the real command line: each case is the arguments and the state of a run
folder, and the one line (and exit code) or the outcome it must give. No case may print a
traceback, write outside its run folder or `--out`, or train on nothing."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import yaml
from test_cli import run_cli

from dream3d import pipeline, presets
from dream3d.errors import UserError
from dream3d.runfolder import run_lock

TINY = ["--preset", "dreamfusion", "--steps", "2", "--resolution", "32", "--seed", "0", "--device", "cpu",
        "--set", "train.preview_every=0", "--set", "train.ckpt_every=1", "--set", "representation.samples_per_ray=16",
        "--set", "export.mesh=false", "--set", "export.video=false"]
# Added to every fresh `generate` case: a case that is not refused (as before its fix) ends in seconds.
CHEAP = ["--steps", "2", "--resolution", "32", "--device", "cpu", "--set", "train.preview_every=0",
         "--set", "export.mesh=false", "--set", "export.video=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_embedded_dir):
    """A finished two-step run folder (checkpoints, no exports), made once; cases get copies."""
    flags = presets.run_flags("a red cube", model=str(tiny_embedded_dir), device="cpu", steps=2, resolution=32, seed=0)
    cfg = presets.resolve("dreamfusion", flags, ["train.preview_every=0", "train.ckpt_every=1",
                                                 "representation.samples_per_ray=16", "export.mesh=false",
                                                 "export.video=false"])
    return pipeline.generate(cfg, tmp_path_factory.mktemp("finished"))


def _config(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def _write_config(run, data):
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _rename_stage(name):
    def setup(run, outside):
        data = _config(run)
        data["stages"][0]["name"] = name.format(outside=outside)
        _write_config(run, data)
    return setup


def _latest(text):
    def setup(run, outside):
        (run / "ckpt" / "main" / "latest.json").write_text(text.format(outside=outside))
    return setup


def _ckpt_link(run, outside):
    shutil.copytree(run / "ckpt", outside / "ckpt")
    shutil.rmtree(run / "ckpt")
    (run / "ckpt").symlink_to(outside / "ckpt")


def _config_text(content):
    def setup(run, outside):
        (run / "config.yaml").write_bytes(content)
    return setup


def _hold_lock(run, outside, stack):
    stack.enter_context(run_lock(run))  # held by this test process while the CLI runs


def _prompt_file(run, outside):
    (outside / "p.yaml").write_text(yaml.safe_dump(
        {"prompts": [{"prompt": "a red cube", "steps": 2, "set": {
            "stages.0.name": "../../escape", "train.resolution": 32, "train.preview_every": 0,
            "export.mesh": False, "export.video": False}}]}))


# (id, arguments ({run}, {outside}, {out}, {model} are filled in), folder setup or None, message, exit code)
REFUSED = [
    # stage names are identifiers, never paths
    ("stage-abs-path", ["generate", "a red cube", "--set", "stages.0.name={outside}/victim"], None,
     "config key 'stages.0.name'", 2),
    ("stage-dotdot", ["generate", "a red cube", "--set", "stages.1.name=../../x"], None, "config key 'stages.1.name'", 2),
    ("stage-upper-and-long", ["generate", "a red cube", "--set", "stages.0.name=" + "A" * 40], None,
     "is not a stage name", 2),
    ("stage-twice", ["generate", "a red cube", "--set", "stages.1.name=gaussians"], None, "stage names must differ", 2),
    ("old-run-stage-path", ["generate", "--resume", "{run}"], _rename_stage("../../victim"),
     "config key 'stages.0.name'", 2),
    ("old-run-stage-abs", ["generate", "--resume", "{run}"], _rename_stage("{outside}"), "is not a stage name", 2),
    ("ckpt-symlinked-outside", ["generate", "--resume", "{run}"], _ckpt_link, "leads outside the run folder", 2),
    ("latest-names-outside", ["generate", "--resume", "{run}"],
     _latest('{{"step": 1, "weights": "../../../{outside}/w.safetensors", "state": "step-000001.json"}}'), "corrupt", 2),
    ("batch-set-stage-name", ["batch", "{outside}/p.yaml", "--out", "{out}", "--no-eval", "--device", "cpu"], _prompt_file,
     "stages.0.name", 1),
    # prompts that leave nothing to train on
    ("prompt-chinese", ["generate", "红色的立方体", "--model", "{model}"], None, "does not know '红色的立方体'", 2),
    ("prompt-punctuation", ["generate", "!!!"], None, "no letters or digits", 2),
    ("prompt-emoji", ["generate", "🟥 🧊"], None, "no letters or digits", 2),
    ("prompt-invisible", ["generate", "\u200b\u200b\u202e"], None, "the prompt is empty", 2),
    ("prompt-nothing-known", ["generate", "a, front view", "--model", "{model}", "--allow-unknown-words"], None,
     "no colour or object", 2),
    ("prompt-only-unknown", ["generate", "陶器 🏺", "--model", "{model}", "--allow-unknown-words"], None,
     "no colour or object", 2),
    ("prompt-long-unknown", ["generate", "a red panda panda " + " ".join(f"gadget{i:03d}widget" for i in range(300)),
                             "--model", "{model}"], None, "does not know 'panda', 'gadget000widg…' and 299 more", 2),
    # --resume keeps the run's config: other flags are refused, by name
    ("resume-seed", ["generate", "--resume", "{run}", "--seed", "3"], None, "so --seed cannot apply", 2),
    ("resume-bad-set", ["generate", "--resume", "{run}", "--set", "bogus"], None, "so --set cannot apply", 2),
    ("resume-prompt-out", ["generate", "a blue cube", "--resume", "{run}", "--out", "{outside}"], None,
     "so the prompt, --out cannot apply", 2),
    # one process per run
    ("resume-locked", ["generate", "--resume", "{run}"], _hold_lock,
     f"in use by another dream3d process (pid {os.getpid()} on", 2),
    # a run folder's files, broken
    ("config-text", ["generate", "--resume", "{run}"], _config_text(b"just some text\n"), "not a mapping of settings", 2),
    ("config-empty", ["generate", "--resume", "{run}"], _config_text(b""), "config.yaml", 2),
    ("config-list", ["generate", "--resume", "{run}"], _config_text(b"- a\n- b\n"), "not a mapping of settings", 2),
    ("config-binary", ["generate", "--resume", "{run}"], _config_text(bytes(range(256)) * 4), "config.yaml", 2),
    ("config-stages-5", ["generate", "--resume", "{run}"], _config_text(b"prompt: a red cube\nstages: [5]\n"),
     "stages.0", 2),
    ("config-train-list", ["generate", "--resume", "{run}"], _config_text(b"prompt: a red cube\ntrain: [1, 2]\n"),
     "train", 2),
    ("latest-garbage", ["generate", "--resume", "{run}"], _latest("{{not json"), "corrupt", 2),
    ("latest-list", ["generate", "--resume", "{run}"], _latest("[1, 2, 3]"), "corrupt", 2),
    ("latest-no-step", ["generate", "--resume", "{run}"], _latest('{{"weights": 5}}'), "corrupt", 2),
]
FINISHED = [  # (id, arguments, outcome check)
    ("prompt-fullwidth-accent", ["generate", "ａ ｒëｄ  ｃｕｂｅ", "--model", "{model}", *TINY], "normalised"),
]

# The CLI's own entry point (`dream3d.cli.main`, what `python -m dream3d.cli` runs), called once per case
# in one process, so the heavy imports are paid once; each case's exit code and stderr are kept apart.
DRIVER = r"""
import contextlib, io, json, sys, traceback
from dream3d import cli
results = []
for argv in json.loads(sys.stdin.read()):
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        sys.argv = ["dream3d", *argv]
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"code": code, "stderr": err.getvalue()})
sys.__stdout__.write(json.dumps(results))
"""


def _tree(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, finished_run, tiny_embedded_dir):
    """Every case of the tables run through the CLI: {id: (code, stderr, case folder, files before)}."""
    root = tmp_path_factory.mktemp("hostile")
    cases = [(c[0], c[1], c[2]) for c in REFUSED] + [(c[0], c[1], None) for c in FINISHED]
    argvs, folders = [], {}
    with contextlib.ExitStack() as stack:
        for name, args, setup in cases:
            case = root / name
            run, outside, out = case / "run", case / "outside", case / "out"
            shutil.copytree(finished_run, run)
            outside.mkdir()
            if setup:
                setup(run, outside, stack) if setup is _hold_lock else setup(run, outside)
            fill = {"run": run, "outside": outside, "out": out, "model": tiny_embedded_dir}
            argv = [a.format(**fill) for a in args]
            if argv[0] == "generate" and "--resume" not in argv:
                argv += ["--out", str(out)] + ([] if any(name == f[0] for f in FINISHED) else CHEAP)
            argvs.append(argv)
            folders[name] = (case, _tree(case))
        res = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(argvs), capture_output=True,
                             text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {name: (r["code"], r["stderr"], *folders[name]) for (name, _, _), r in zip(cases, json.loads(res.stdout))}


@pytest.mark.parametrize("message, code", [c[3:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_with_one_line(request, cli_results, message, code):
    name = request.node.callspec.id
    got, stderr, case, before = cli_results[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert got == code, stderr
    if name.startswith("batch"):  # a batch reports the entry's error and goes on: its line is among others
        lines = [line for line in lines if message in line][:1]
    assert len(lines) == 1 and lines[0].startswith("error: ") or name.startswith("batch"), stderr
    assert message in lines[0], lines[0]
    assert len(lines[0]) <= 400, lines[0]
    new = [p for p in _tree(case) if p not in before and p.name != ".lock"]
    if name.startswith("batch"):  # the batch folder itself, and nothing beside it
        new = [p for p in new if p.parts[0] != "out"]
    assert new == []  # nothing written anywhere: no run folder, nothing outside


def test_unknown_word_error_is_short_and_names_each_word_once(cli_results):
    line = cli_results["prompt-long-unknown"][1].strip()
    assert len(line) <= 320, line
    assert line.count("'panda'") == 1 and "red" in line


def test_unicode_prompt_is_normalised_and_trains_on_its_words(cli_results):
    """Full-width letters read as letters, accents fold for the embedded prior: "ａ ｒëｄ  ｃｕｂｅ" is a red cube."""
    code, stderr, case, _ = cli_results["prompt-fullwidth-accent"]
    assert code == 0, stderr
    (run,) = (case / "out").iterdir()
    assert run.name.startswith("a-red-cube-")
    assert _config(run)["prompt"] == "a rëd cube"  # NFKC; the accent stays for real text encoders
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert "does not know" not in stderr and "ignores" not in stderr
    from dream3d.priors import vocab

    assert vocab.clean_prompt("a rëd cube") == vocab.clean_prompt("ａ ＲＥＤ cube") == "a red cube"


def test_a_locked_run_is_refused_by_a_separate_process(tmp_path, finished_run):
    """`python -m dream3d.cli` itself: the lock holds across processes and the message is one line."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with run_lock(run):
        res = run_cli("generate", "--resume", run)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "in use by another dream3d process" in line and f"pid {os.getpid()}" in line, line
    assert _free_for_another_thread(run)


def _free_for_another_thread(path) -> bool:
    errors = []

    def other():
        try:
            with run_lock(path):
                pass
        except UserError as e:
            errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert not errors or "in use" in errors[0], errors
    return not errors


def test_run_lock_is_reentrant_in_one_thread_and_exclusive_across_threads(tmp_path):
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # a batch entry running generate in-process takes it again
            pass
        assert not _free_for_another_thread(tmp_path)  # the inner block did not release the outer's lock
    assert _free_for_another_thread(tmp_path)


def test_run_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dream3d.runfolder import run_lock\n"
        f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid} on"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path):  # the OS dropped the dead holder's lock
        pass


def test_checkpoint_clean_up_deletes_only_its_own_files(tmp_path):
    import torch

    from dream3d.training.checkpoint import KEEP, save_checkpoint

    foreign = ["notes.txt", "step-old.safetensors", "step-12.safetensors", "mine.json", "step-000001.safetensors.bak"]
    for name in foreign:
        (tmp_path / name).write_text("not a checkpoint")
    (tmp_path / "step-000000.safetensors").symlink_to(tmp_path / "notes.txt")
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    for step in range(1, 7):
        save_checkpoint(tmp_path, step, {"net": net}, opt, torch.Generator())
    for name in foreign:
        assert (tmp_path / name).read_text() == "not a checkpoint", name
    assert (tmp_path / "step-000000.safetensors").is_symlink()
    kept = sorted(p.name for p in tmp_path.glob("step-0*.safetensors") if not p.is_symlink())
    assert kept == [f"step-{s:06d}.safetensors" for s in range(7 - KEEP - 1, 7)]


def test_generate_releases_the_lock_when_it_returns_or_fails(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert pipeline.generate(None, tmp_path, resume=run) == run
    (run / "ckpt" / "main" / "latest.json").write_text("garbage")
    with pytest.raises(UserError, match="corrupt"):
        pipeline.generate(None, tmp_path, resume=run)
    assert _free_for_another_thread(run)  # neither left it held


@pytest.mark.parametrize("content, message", [
    (b"just text", "not a mapping of settings"),
    (b"", "holds nothing"),
    (b"- 1\n- 2\n", "not a mapping of settings"),
    (bytes(range(256)), "cannot read the run config"),
    (b"prompt: a red cube\nstages: [5]\n", "config section 'stages.0' must be a mapping"),
    (b"prompt: a red cube\nrepresentation: 5\n", "config section 'representation' must be a mapping"),
    (b"prompt: a red cube\nstages: [{guidance: [1]}]\n", "config section 'stages.0.guidance' must be a mapping"),
    (b"prompt: a red cube\nstages: [{train: 7}]\n", "config section 'stages.0.train' must be a mapping"),
    (b"prompt: a red cube\ntrain: {steps: [1\n", "cannot read the run config"),
])
def test_config_load_gives_one_line_for_any_file(tmp_path, content, message):
    """config.load itself (export, eval and the gallery read config.yaml through it too)."""
    from dream3d import config

    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        config.load(path)
    assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 400, str(err.value)


def test_prompt_is_normalised_where_the_config_is_built():
    flags = presets.run_flags("  ａ   ｒｅｄ\tｃｕｂｅ\u200b ", negative_prompt="ｂｌｕｒｒｙ")
    cfg = presets.resolve("dreamfusion", flags, [])
    assert cfg.prompt == "a red cube" and cfg.negative_prompt == "blurry"
    from dream3d.run import slugify

    assert slugify("a rëd crème cube") == "a-red-creme-cube" and slugify("红色的立方体") == "run"
    with pytest.raises(UserError, match="no letters or digits"):
        presets.resolve("dreamfusion", presets.run_flags("🙂 ?!"), [])


def test_embedded_prior_folds_accents_and_names_other_scripts():
    from dream3d.priors import vocab

    assert vocab.check_prompt("a rëd cube") == [] and vocab.words("ＡＮ ÓRANGE cône") == ["a", "orange", "cone"]
    assert vocab.check_prompt("a red cube 立方体 立方体 wow wow", allow_unknown=True) == ["立方体", "wow"]
    with pytest.raises(UserError, match="does not know '立方体'"):
        vocab.check_prompt("a red 立方体")
    for text in ("!!!", "", "a", "front view", "🟥"):
        with pytest.raises(UserError, match="no colour or object"):
            vocab.check_prompt(text, allow_unknown=True)
