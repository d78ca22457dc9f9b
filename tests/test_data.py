import pytest

from mgsr_bench.config import train_config
from mgsr_bench.data.collate import IGNORE, collate, prompts_within, shifted_labels, tokenize_records
from mgsr_bench.data.jsonl import read_records, write_records
from mgsr_bench.data.template import build_prompt
from mgsr_bench.errors import UserError
from mgsr_bench.suite.tasks import _NAMES, FAMILIES, generate_suite_data

from conftest import SHARED


def test_suite_data_is_deterministic_and_disjoint():
    a = generate_suite_data(300, 60, 60, seed=7)
    b = generate_suite_data(300, 60, 60, seed=7)
    assert a == b
    assert generate_suite_data(300, 60, 60, seed=8)["test"] != a["test"]
    train = {r["prompt"] for r in a["train"]}
    for split in ("valid", "test", "shifted"):
        assert not train & {r["prompt"] for r in a[split]}, split
    assert {r["family"] for r in a["test"]} == set(FAMILIES)
    for r in a["train"][:20]:
        assert r["prompt"] == build_prompt(r["instruction"], r["input"])


_BUILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from pathlib import Path
from mgsr_bench.models import weights_digest
from mgsr_bench.suite.build import ModelShape, SuiteConfig, build_suite
train = {"micro_batch": 32, "lr": 3e-3, "val_metric": "loss", "seed": 0}
config = SuiteConfig(name="tiny-micro", n_train=800, n_valid=16, n_test=8, vocab_size=300,
                     teacher=ModelShape(128, 2, 4, 352), student=ModelShape(64, 1, 2, 176),
                     teacher_train={**train, "steps": 12, "eval_every": 6},
                     student_init_train={**train, "steps": 4, "eval_every": 4})
root = Path(sys.argv[2])
build_suite(config, root)
report = json.loads((root / "suite.json").read_text())["report"]
assert report["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
assert [step for step, _ in report["teacher_train"]["val_loss_history"]] == [6, 12]
stage = report["teacher_train"]
assert stage["best_val_loss"] == dict(stage["val_loss_history"])[stage["best_step"]] > 0  # the loss, not minus it
print(torch.get_num_threads(), weights_digest(root / "teacher"), weights_digest(root / "student-init"))
"""


@pytest.mark.slow
def test_a_suite_builds_the_same_models_whatever_the_thread_count(tmp_path):
    """Built by processes set to 1 and to 3 threads: the same teacher and SFT init, byte for byte
    (unpinned, these two differ), and each process gets its own thread count back."""
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-c", _BUILD, str(n), str(tmp_path / str(n))], capture_output=True,
                           text=True, timeout=300) for n in (1, 3)]
    assert all(o.returncode == 0 for o in outs), outs[0].stderr[-3000:] + outs[1].stderr[-3000:]
    (one, *digests_one), (three, *digests_three) = (o.stdout.split("\n")[-2].split() for o in outs)
    assert (one, three) == ("1", "3")
    assert digests_one == digests_three


def test_builds_on_machines_sharing_a_cache_write_apart_even_with_the_same_process_number(monkeypatch, tmp_path):
    """Each machine of a multi-node launch builds a missing suite; in containers their processes
    often have the same number, and a folder named by the pid alone was one folder for both."""
    import os
    import socket

    from mgsr_bench.suite import build

    monkeypatch.setattr(os, "getpid", lambda: 7)
    folders = set()
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        folders.add(build.building_folder(tmp_path / "tiny-key"))
    assert len(folders) == 2 and all(f.parent == tmp_path and f.name.endswith("-7") for f in folders)


def test_shifted_split_holds_out_phrasings_and_per_family_entities():
    data = generate_suite_data(1200, 60, 120, seed=1)
    train_instructions = {r["instruction"].split(". ")[0] for r in data["train"]}
    assert all(r["instruction"].split(". ")[0] not in train_instructions for r in data["shifted"])
    names = set(_NAMES)

    def names_in(rows, family):
        return {w.strip(".,'s") for r in rows if r["family"] == family for w in r["input"].split()} & names

    # QA in the shifted split asks about people that train only shows in other families.
    shifted_qa, train_qa = names_in(data["shifted"], "qa"), names_in(data["train"], "qa")
    assert shifted_qa and not shifted_qa & train_qa
    assert shifted_qa <= set().union(*(names_in(data["train"], f) for f in FAMILIES if f != "qa"))


@pytest.mark.skipif(not (SHARED / "data/instruct").is_dir(), reason="../shared/data/instruct is absent")
@pytest.mark.parametrize("path", ["dolly/valid.jsonl", "self-inst/valid.jsonl", "vicuna/valid.jsonl"])
def test_template_matches_minillm_prompts(path):
    rows = read_records(SHARED / "data/instruct" / path)
    assert rows and all(build_prompt(r["instruction"], r.get("input", "")) == r["prompt"] for r in rows)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{not json}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        read_records(path)
    path.write_text('{"instruction": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: missing key\(s\) output"):
        read_records(path)
    path.write_text("\n")
    with pytest.raises(UserError, match="empty data file"):
        read_records(path)
    with pytest.raises(UserError, match="not found"):
        read_records(tmp_path / "missing.jsonl")


def test_records_round_trip(tmp_path, records):
    write_records(tmp_path / "x.jsonl", records[:5])
    assert read_records(tmp_path / "x.jsonl") == records[:5]
    assert not list(tmp_path.glob(".*tmp"))


def test_pad_equals_eos_labels_keep_the_response_eos(tokenizer, records):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    examples = tokenize_records(records[:4], tokenizer)
    batch = collate(examples, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for i, e in enumerate(examples):
        row_labels = batch["labels"][i]
        n_prompt, n_resp = len(e.prompt_ids), len(e.response_ids)
        assert (row_labels[:n_prompt] == IGNORE).all()
        assert row_labels[n_prompt: n_prompt + n_resp].tolist() == e.response_ids
        assert e.response_ids[-1] == eos
        assert (row_labels[n_prompt + n_resp:] == IGNORE).all()  # padding, also eos ids, is ignored
        # The position before the final EOS predicts it: the EOS is a loss target.
        targets = shifted_labels(batch["labels"])[i]
        assert targets[n_prompt + n_resp - 2].item() == eos
        assert int((targets != IGNORE).sum()) == n_resp
    # A mask taken from input_ids != pad would lose every response's EOS; the labels keep them all.
    ids = batch["input_ids"]
    naive = (ids != tokenizer.pad_token_id) & (batch["labels"] != IGNORE)
    assert int(naive.sum()) == int((batch["labels"] != IGNORE).sum()) - len(examples)


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    from mgsr_bench.data.jsonl import write_atomic

    write_atomic(tmp_path / "x.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("long_prompts, dropped", [("drop", 1), ("truncate", 0)])
def test_training_drops_examples_whose_prompt_does_not_fit_unless_told_to_truncate(tokenizer, records, student,
                                                                                    long_prompts, dropped):
    """MiniLLM drops a training example whose prompt is over 256 tokens (its cut would lose `###
    Response:`); DistiLLM truncates it. The summary says how many were dropped."""
    from mgsr_bench.config import load_recipe
    from mgsr_bench.pipeline import train_student

    long = {**records[0], "prompt": "word " * 300 + records[0]["prompt"]}
    assert len(prompts_within([long, records[0]], tokenizer)) == 1
    trained = train_student(load_recipe("sft"), student, None, tokenizer, [long] + records[:8], records[8:12],
                            train_overrides={"steps": 1, "micro_batch": 2, "eval_every": 1, "val_metric": "loss",
                                             "long_prompts": long_prompts})
    assert trained.summary["long_prompts_dropped"] == {"train": dropped, "valid": 0}
    with pytest.raises(UserError, match="train.long_prompts must be 'drop' or 'truncate'"):
        train_config({"long_prompts": "cut"}, where="t")
