"""The command line: help, listing, bad input (one line, non-zero exit, nothing written), and a
train -> eval -> leaderboard path on tiny random-init models saved like Hub checkpoints."""

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgsr_bench.cli.main import main

from conftest import SHARED, tiny_model


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mgsr_bench", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", ["run", "train", "eval", "agreement", "leaderboard", "list"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: mgsr-bench " + command in capsys.readouterr().out


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "kd" in out and "tiny-quick" in out


def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    """``python -m mgsr_bench ARGS`` (what launchers run) is ``mgsr-bench ARGS``, its exit status included."""
    import runpy

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it for its process: kept to this test
    monkeypatch.setattr(sys, "argv", ["mgsr-bench", "list"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("mgsr_bench", run_name="__main__", alter_sys=True)
    assert exc.value.code == 0 and "tiny-quick" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["mgsr-bench", "run", "--seeds", "1,x"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("mgsr_bench", run_name="__main__", alter_sys=True)
    assert exc.value.code == 2 and "--seeds takes comma-separated integers" in capsys.readouterr().err

@pytest.mark.parametrize("args,message", [
    (["run", "--methods", "sft,kdd"], "unknown recipe 'kdd' (did you mean 'kd'?)"),
    (["run", "--seeds", "1,x"], "--seeds takes comma-separated integers"),
    (["train", "kd", "--teacher", "x"], "--teacher, --student (or --pair), --train-data and --valid-data go together"),
    (["eval", "m", "--data", "nofile"], "--data takes NAME=PATH"),
    (["run", "--methods", "kd", "--set", "init_threshold=0.5"],
     "--set init_threshold: no chosen recipe's method has that option"),
    (["run", "--methods", "kd,distillm", "--set", "init_threshold=7"], "bad options for method 'distillm'"),
    (["run", "--methods", "mgsr", "--set", "spans=nouns"], "spans must be one of rule, word, spacy"),
    (["eval", "a", "b", "--label", "x"], "--label names one model's record"),
    (["eval", "m", "--max-prompt", "600"], "--max-prompt (600) must be below --max-length (512)"),
    (["eval", "m", "--data", "d=hub:someone/else"], "the Hub loader reads databricks/databricks-dolly-15k"),
    (["eval", "m", "--data", "d=hub:databricks/databricks-dolly-15k@valid"], "unknown Dolly split 'valid'"),
    pytest.param(["run", "--lm-eval", "no_such_task_xyz"], "unknown lm-eval task(s) no_such_task_xyz",
                 marks=pytest.mark.slow),  # lm-eval indexes its whole task registry first
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, cli, args, message):
    out = tmp_path / "out"
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    proc = cli(*args, "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mgsr-bench: error: {proc.stderr.split('error: ', 1)[1].strip()}"]
    assert message in proc.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_run_or_eval_on_several_processes_and_plan_with_an_unknown_method_are_refused_in_one_line(tmp_path,
                                                                                                 monkeypatch, cli):
    out = tmp_path / "out"
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    unknown = cli("plan", "tiny", "--method", "mgsx")
    monkeypatch.setenv("WORLD_SIZE", "2")
    several = cli("run", "--out", str(out))
    evals = cli("eval", "m", "--out", str(out))
    for proc, message in ((several, "run is the single-process tiny-suite job; launch `train` on several"),
                          (evals, "eval runs in one process (under a launcher every process would evaluate"),
                          (unknown, "unknown method 'mgsx' (did you mean 'mgsr'?)")):
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_mismatched_tokenizers_are_refused(hub_style_pair, tmp_path, cli):
    from mgsr_bench.suite.tokenizer import train_tokenizer

    other = tmp_path / "other"
    tiny_model(300).save_pretrained(other)
    train_tokenizer(["completely different text " * 50], 300, other)
    p = hub_style_pair
    proc = cli("train", "kd", "--teacher", str(p / "teacher"), "--student", str(other), "--train-data",
               str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"))
    assert proc.returncode == 2 and "tokenizers differ" in proc.stderr
    assert not (p / "run").exists()


def test_student_with_too_few_embedding_rows_is_refused(hub_style_pair, tokenizer, cli):
    p = hub_style_pair
    small = p / "small"
    tiny_model(len(tokenizer) - 10).save_pretrained(small)
    tokenizer.save_pretrained(small)
    proc = cli("train", "kd", "--teacher", str(p / "teacher"), "--student", str(small), "--train-data",
               str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"))
    assert proc.returncode == 2 and "student has" in proc.stderr and "embedding rows" in proc.stderr
    assert not (p / "run").exists()


@pytest.mark.skipif(not (SHARED / "data" / "instruct").is_dir() or not (SHARED / "tokenizers" / "gpt2").is_dir(),
                    reason="../shared/data/instruct or ../shared/tokenizers/gpt2 is absent")
def test_eval_filters_the_protocols_sets_with_gpt2s_tokenizer_whatever_the_model(hub_style_pair, cli):
    """Raw self-instruct keeps the 242 prompts of at most 256 GPT-2 tokens for a model whose own
    tokenizer counts them otherwise: every model is scored on the released set's examples."""
    p = hub_style_pair
    raw = SHARED / "data" / "instruct" / "raw" / "self-instruct" / "user_oriented_instructions.jsonl"
    proc = cli("eval", str(p / "student"), "--data", f"selfinst={raw}", "--protocol-tokenizer",
               str(SHARED / "tokenizers" / "gpt2"), "--seeds", "10", "--max-new-tokens", "1", "--out", str(p / "ev"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((p / "ev" / "records" / "student.json").read_text())["scores"]["selfinst"]["n"] == 242


def test_eval_follows_the_pairs_reference_on_bos_and_records_the_pair(hub_style_pair, cli, monkeypatch):
    p = hub_style_pair
    from mgsr_bench.models import load_tokenizer

    tok = load_tokenizer(p / "student")
    tok.bos_token = tok.eos_token  # a LLaMA-style tokenizer with a BOS
    tok.save_pretrained(p / "student")
    (p / "pairs.yaml").write_text(f"mine:\n  teacher: {p / 'teacher'}\n  student: {p / 'student'}\n"
                                  "  reference: distillm\n")
    monkeypatch.setenv("MGSR_BENCH_PAIRS", str(p / "pairs.yaml"))
    for pair, bos in (("mine", True), ("gpt2-xl-gpt2", False)):
        proc = cli("eval", str(p / "student"), "--pair", pair, "--data", f"t={p / 'test.jsonl'}", "--seeds", "10",
                   "--max-new-tokens", "1", "--out", str(p / pair))
        assert proc.returncode == 0, proc.stderr
        record = json.loads((p / pair / "records" / "student.json").read_text())
        assert record["evaluation"]["add_bos"] is bos and record["pair"]["name"] == pair
        assert record["pair"]["reference"] == ("distillm" if bos else "minillm")


def test_malformed_data_is_refused_before_compute(hub_style_pair, cli):
    p = hub_style_pair
    (p / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n[1, 2]\n')
    proc = cli("train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
               str(p / "bad.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr
    assert not (p / "run").exists()


@pytest.mark.slow
def test_train_eval_leaderboard_on_saved_models(hub_style_pair):
    p = hub_style_pair
    proc = _cli("train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
                str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"),
                "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((p / "run" / "training.json").read_text())
    assert summary["config"]["method"] == "kd" and len(summary["training"]["history"]) == 3
    assert summary["training"]["val_examples"] == 40  # val_size 120 on a 40-record validation set
    proc = _cli("eval", str(p / "run" / "model"), str(p / "teacher"), "--data", f"test={p / 'test.jsonl'}",
                "--seeds", "10,20", "--out", str(p / "eval"))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((p / "eval" / "records" / "run.json").read_text())
    assert set(rec["scores"]["test"]["per_seed"]) == {"10", "20"} and rec["config"]["dtype"] == "float32"
    assert rec["training"] == summary["training"]  # a `train` run's model: its seed, history and cost kept
    assert json.loads((p / "eval" / "records" / "teacher.json").read_text())["training"] is None
    low, high = rec["scores"]["test"]["rougeL"]["ci95"]
    assert low <= rec["scores"]["test"]["rougeL"]["mean"] <= high
    # a `train` run folder evaluates its model/, a `run` folder each of its models/*
    (p / "many" / "models").mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copytree(p / "run" / "model", p / "many" / "models" / name)
    proc = _cli("eval", str(p / "run"), str(p / "many"), "--data", f"test={p / 'test.jsonl'}", "--seeds", "10",
                "--out", str(p / "folders"), "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert sorted(f.name for f in (p / "folders" / "records").iterdir()) == ["a.json", "b.json", "run.json"]
    assert json.loads((p / "folders" / "records" / "a.json").read_text())["config"]["dtype"] == "bfloat16"
    assert sorted(f.name for f in (p / "folders").iterdir()) == ["records"]  # the generations' cache is gone
    proc = _cli("leaderboard", str(p / "eval"), "--format", "csv")
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "method,kind,test_mean,test_std,avg,train_device_seconds"
    assert float(proc.stdout.splitlines()[2].split(",")[-1]) == summary["training"]["cost"]["device_seconds"]
    assert {line.split(",")[0] for line in proc.stdout.splitlines()[1:]} == {"run", "teacher"}
    (p / "run" / "training.json").write_text("{not json")
    proc = _cli("eval", str(p / "run"), "--data", f"test={p / 'test.jsonl'}", "--out", str(p / "damaged"))
    assert proc.returncode == 2 and "training.json is damaged" in proc.stderr and not (p / "damaged").exists()


@pytest.mark.slow
def test_a_non_editable_install_names_the_missing_checkout_in_one_line(tmp_path):
    """``pip install .`` (not ``-e``) copies the package but not the recipes and reported scores, which
    stay in the clone: ``run`` and ``leaderboard --reported`` then end in one line saying so, before any
    work and writing nothing, ``list`` says it under recipes, and ``MGSR_BENCH_RECIPES`` finds them."""
    pytest.importorskip("setuptools", minversion="77")  # the build below runs in this venv (pyproject's backend)
    root = Path(__file__).resolve().parents[1]
    source, site, cwd = tmp_path / "source", tmp_path / "site", tmp_path / "work"
    shutil.copytree(root / "mgsr_bench", source / "mgsr_bench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-compile", "--target", str(site), str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MGSR_BENCH_RECIPES"}
    env["PYTHONPATH"] = str(site)

    def mgsr_bench(*args, **extra):
        return subprocess.run([sys.executable, "-m", "mgsr_bench", *args], cwd=cwd, env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    for proc in (mgsr_bench("run", "--quick"), mgsr_bench("leaderboard", str(cwd), "--reported", "gpt2-xl->gpt2")):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "pip install -e ." in proc.stderr, proc.stderr
    assert list(cwd.iterdir()) == []
    assert "none found" in mgsr_bench("list", "recipes").stdout
    found = mgsr_bench("list", "recipes", MGSR_BENCH_RECIPES=str(root / "baselines")).stdout
    assert "none found" not in found and "  kd " in found


BAD_RECIPES = [  # (recipe text, what the one line says)
    ("method: kd\ntrain: {weight_decay: -1}\n", "train.weight_decay must be >= 0"),
    ("method: kd\ntrain: {lr: .nan}\n", "train.lr must be a finite number"),
    ("method: kd\ntrain: {seed: -1}\n", "train.seed must be in [0, 2**64), got -1"),
    ("method: kd\ntrain: {max_grad_norm: -1}\n", "train.max_grad_norm must be > 0"),
    ("method: gkd\ntrain: {gen_temperature: .nan}\n", "train.gen_temperature must be a finite number"),
    ("method: kd\noptions: {temperature: .nan}\n", "option 'temperature' of method 'kd' must be a finite number"),
    ("method: kd\noptions: {temperature: hot}\n", "option 'temperature' of method 'kd' must be of type float"),
    ("method: gkd\noptions: {seq_kd: 'false'}\n", "option 'seq_kd' of method 'gkd' must be of type bool"),
]


@pytest.mark.parametrize("text, says", BAD_RECIPES)
def test_recipe_values_of_the_wrong_type_or_not_finite_are_refused_by_name(hub_style_pair, cli, text, says):
    """NaN passes every range check (it compares false) and a YAML string 'false' is a true bool: so
    each value is checked for its type and finiteness, and refused in one line before any model loads."""
    p = hub_style_pair
    (p / "bad.yaml").write_text(text)
    proc = cli("train", str(p / "bad.yaml"), "--teacher", str(p / "teacher"), "--student", str(p / "student"),
               "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"))
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (p / "run").exists()


def _one_record_store(root: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(sorted((root / "leaderboards" / "tiny" / "records").glob("*.json"))[0], store)
    return store


@pytest.mark.parametrize("case", ["data-type", "data-utf8", "out-under-file", "label-path", "data-twice",
                                  "seeds-twice", "output-folder", "write-file", "bad-date", "tolerance-nan",
                                  "gpu-mem-nan", "bench-unknown", "bench-none", "bench-odd-length", "bench-json-folder",
                                  "usage", "cut-record", "no-tokenizer", "no-model-folder", "protocol-tokenizer",
                                  "data-name-path", "data-name-hidden", "seeds-overflow", "seeds-negative",
                                  "nested-json", "fastchat-answer", "fastchat-question"])
def test_bad_arguments_and_files_end_in_one_line_before_any_work(hub_style_pair, tmp_path, cli, case):
    """Each ends in exit 2 and one line naming the problem, before any work and with nothing written:
    no traceback, no usage block, no record written outside --out, no NaN tolerance calling a 50-point
    drop noise, no seed counted twice."""
    p, root = hub_style_pair, Path(__file__).resolve().parents[1]
    (p / "afile").write_text("x")
    (p / "afolder").mkdir()
    models = ["--teacher", str(p / "teacher"), "--student", str(p / "student")]
    data = ["--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl")]
    (p / "typed.jsonl").write_text('{"instruction": 1, "input": "", "output": "a"}\n')
    (p / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "a"}\n')
    store = _one_record_store(root, tmp_path)
    if case == "cut-record":  # a record cut short: named, never left out of the table without a word
        (store / "cut.json").write_text('{"schema": "mgsr-bench/run-record", "schema_version": 1, "lab')
    args, says = {
        "data-type": (["train", "kd", *models, "--train-data", str(p / "typed.jsonl"), "--valid-data",
                       str(p / "valid.jsonl"), "--out", str(p / "run")], "typed.jsonl:1: instruction must be text"),
        "data-utf8": (["eval", str(p / "student"), "--data", f"t={p / 'latin1.jsonl'}", "--out", str(p / "run")],
                      "latin1.jsonl:1: not UTF-8"),
        "out-under-file": (["train", "kd", *models, *data, "--out", str(p / "afile" / "run")], "afile is a file"),
        "label-path": (["eval", str(p / "student"), "--data", f"t={p / 'valid.jsonl'}", "--label", "../escape",
                        "--out", str(p / "run")], "--label must be a plain name"),
        "data-twice": (["eval", str(p / "student"), "--data", f"t={p / 'valid.jsonl'}", "--data",
                        f"t={p / 'train.jsonl'}", "--out", str(p / "run")], "names the dataset 't' twice"),
        "seeds-twice": (["eval", str(p / "student"), "--data", f"t={p / 'valid.jsonl'}", "--seeds", "10,10",
                         "--out", str(p / "run")], "names seed 10 twice"),
        "output-folder": (["leaderboard", str(store), "--output", str(p / "afolder")], "is a folder"),
        "write-file": (["leaderboard", str(store), "--write", str(p / "afile")], "exists and is not a folder"),
        "bad-date": (["leaderboard", str(store), "--since", "2020-13-45"], "expected an ISO date"),
        "tolerance-nan": (["compare", str(store), "--against", str(store), "--tolerance", "nan"],
                          "expected a finite number"),
        "gpu-mem-nan": (["plan", "tiny", "--gpu-mem", "nan"], "expected a finite number"),
        "bench-unknown": (["bench", "--methods", "kd,nosuch", "--json", str(p / "run" / "b.json")],
                          "unknown method 'nosuch'"),
        "bench-none": (["bench", "--methods", ","], "--methods names no method"),
        "bench-odd-length": (["bench", "--seq-len", "513"], "--seq-len must be even and within 4..1024"),
        "bench-json-folder": (["bench", "--methods", "kd", "--json", str(p / "afolder")], "is a folder"),
        "usage": (["train", "kd", "--steps", "two"], "invalid int value"),
        "cut-record": (["leaderboard", str(store)], "cut.json: invalid JSON"),
        "no-tokenizer": (["eval", str(p / "bare"), "--data", f"t={p / 'valid.jsonl'}", "--out", str(p / "run")],
                         "the folder holds no tokenizer files"),
        "no-model-folder": (["eval", str(p / "gone"), "--data", f"t={p / 'valid.jsonl'}", "--out", str(p / "run")],
                            f"cannot load tokenizer '{p / 'gone'}': no such folder"),
        "protocol-tokenizer": (["eval", str(p / "student"), "--data", f"sni={p / 'valid.jsonl'}", "--protocol-tokenizer",
                                str(p / "afolder"), "--out", str(p / "run")],
                               "count tokens with GPT-2's tokenizer: cannot load tokenizer"),
        "data-name-path": (["eval", str(p / "student"), "--data", f"../../escape={p / 'valid.jsonl'}", "--out",
                            str(p / "run")], "the dataset name must be a plain name"),
        "data-name-hidden": (["eval", str(p / "student"), "--data", f".x={p / 'valid.jsonl'}", "--out",
                              str(p / "run")], "the dataset name must be a plain name"),
        "seeds-overflow": (["eval", str(p / "student"), "--data", f"t={p / 'valid.jsonl'}", "--seeds", str(2**64),
                            "--out", str(p / "run")], f"--seeds: seed {2**64} does not fit in 64 bits"),
        "seeds-negative": (["run", "--seeds", "10,-1"], "--seeds: seed -1 is negative"),
        "nested-json": (["train", "kd", *models, "--train-data", str(p / "nested.jsonl"), "--valid-data",
                         str(p / "valid.jsonl"), "--out", str(p / "run")], "nested.jsonl:1: nested too deeply"),
        "fastchat-answer": (["eval", str(p / "student"), "--data", f"v={p / 'q.jsonl'}+{p / 'a.jsonl'}", "--out",
                             str(p / "run")], "a.jsonl:1: choices.0.turns.0 is not there or not text"),
        "fastchat-question": (["eval", str(p / "student"), "--data", f"v={p / 'q0.jsonl'}+{p / 'a0.jsonl'}", "--out",
                               str(p / "run")], "q0.jsonl:1: text is not there or not text"),
    }[case]
    (p / "nested.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (p / "q.jsonl").write_text('{"question_id": 1, "turns": ["hi"]}\n')
    (p / "a.jsonl").write_text('{"question_id": 1, "choices": []}\n')
    (p / "q0.jsonl").write_text('{"question_id": 1, "category": "writing"}\n')
    (p / "a0.jsonl").write_text('{"question_id": 1, "text": "hello"}\n')
    if case == "no-tokenizer":
        tiny_model(300).save_pretrained(p / "bare")
    before = sorted(q.relative_to(tmp_path) for q in tmp_path.rglob("*") if q.name != ".mgsr-index.sqlite")
    proc = cli(*args)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    after = sorted(q.relative_to(tmp_path) for q in tmp_path.rglob("*") if q.name != ".mgsr-index.sqlite")
    assert after == before and not (tmp_path / "escape.json").exists()


def test_output_files_are_overwritten_and_output_folders_made(tmp_path, cli):
    """The output checks refuse only what cannot be written: an existing ``--output`` file is
    replaced, and a ``--write`` folder that does not exist yet is made, parents included."""
    store = _one_record_store(Path(__file__).resolve().parents[1], tmp_path)
    (tmp_path / "board.md").write_text("old")
    proc = cli("leaderboard", str(store), "--output", str(tmp_path / "board.md"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "board.md").read_text() == proc.stdout != "old"
    proc = cli("leaderboard", str(store), "--write", str(tmp_path / "new" / "board"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new" / "board" / "leaderboard.md").is_file()
