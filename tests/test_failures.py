"""What the machine refuses ends in one line naming the file and the fix (exit 5), with nothing
half-written; a folder a command writes loses the temporary files of killed earlier runs and never
anyone else's; a refused command leaves no empty ``--out``."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_model
from mgsr_bench.errors import EnvironmentFailure
from mgsr_bench.outputs import sweep_stale, temp_sibling

ROOT = Path(__file__).resolve().parents[1]
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full(*args, **kwargs):
    raise FULL


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for path in sorted((ROOT / "leaderboards" / "tiny" / "records").glob("*.json"))[:2]:
        shutil.copy(path, store)
    return store


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(proc: subprocess.CompletedProcess, *says: str) -> None:
    assert proc.returncode == 5, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for text in says:
        assert text in proc.stderr, proc.stderr


def test_a_full_disk_during_leaderboard_write_is_one_line_and_leaves_the_previous_set(tmp_path, cli, monkeypatch):
    store, board = _store(tmp_path), tmp_path / "board"
    assert cli("leaderboard", str(store), "--write", str(board)).returncode == 0
    before = _files(board)
    monkeypatch.setattr(os, "fsync", _disk_full)
    _one_line(cli("leaderboard", str(store), "--write", str(board)),
              f"cannot write {board}: No space left on device; free space there")
    assert _files(board) == before  # and no staging folder left
    with pytest.raises(EnvironmentFailure):  # --debug: the traceback, as the failure itself
        cli("leaderboard", str(store), "--write", str(board), "--debug")


def test_a_full_disk_writing_a_record_or_checkpoint_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from mgsr_bench.data.jsonl import write_atomic
    from mgsr_bench.train.checkpoint import _write

    monkeypatch.setattr(os, "fsync", _disk_full)
    for write, path in ((lambda p: write_atomic(p, "{}"), tmp_path / "records" / "kd.json"),
                        (lambda p: _write(p, {"step": 1}), tmp_path / "checkpoints" / "step-0000001.pt")):
        with pytest.raises(EnvironmentFailure, match=f"cannot write {path}: No space left on device"):
            write(path)
        assert list(path.parent.iterdir()) == []


def test_a_failed_model_save_keeps_the_previous_model_and_leaves_no_copy(tmp_path, tokenizer, monkeypatch):
    from mgsr_bench.pipeline import save_model_atomic

    folder = tmp_path / "models" / "kd"
    model = tiny_model(len(tokenizer))
    save_model_atomic(model, tokenizer, folder)
    before = _files(folder)
    monkeypatch.setattr(type(model), "save_pretrained", _disk_full)
    with pytest.raises(EnvironmentFailure, match=f"cannot write {folder}: No space left on device"):
        save_model_atomic(model, tokenizer, folder)
    assert _files(folder) == before and sorted(p.name for p in folder.parent.iterdir()) == ["kd"]


def test_a_full_disk_while_the_store_index_is_built_is_one_line(tmp_path, cli, monkeypatch):
    store = _store(tmp_path)
    before = sorted(p.name for p in store.iterdir())

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite3, "connect", full)
    _one_line(cli("leaderboard", str(store)), f"cannot write {store / '.mgsr-index.sqlite'}: database or disk is full")
    assert sorted(p.name for p in store.iterdir()) == before  # no index, no temporary


def test_a_permission_refused_by_the_machine_is_one_line_naming_the_file(tmp_path, cli, monkeypatch):
    """An OSError that no writer wrapped (here the folder's creation) still ends in one line."""
    store = _store(tmp_path)
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.name == "board":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    proc = cli("leaderboard", str(store), "--write", str(tmp_path / "board"))
    assert proc.returncode in (2, 5) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert str(tmp_path / "board") in proc.stderr and "Permission denied" in proc.stderr


@pytest.fixture()
def model_folder(tmp_path, tokenizer):
    folder = tmp_path / "model"
    tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "t.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    return folder


def test_a_truncated_safetensors_file_is_one_line(model_folder, cli):
    weights = model_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _one_line(cli("eval", str(model_folder), "--data", f"t={model_folder.parent / 't.jsonl'}", "--seeds", "1",
                  "--out", str(model_folder.parent / "out")), "a safetensors file is damaged", str(model_folder))
    assert not (model_folder.parent / "out").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARK']}",))


def test_pickled_weights_that_would_run_code_are_refused_in_one_line_without_running_it(model_folder, cli,
                                                                                        monkeypatch):
    mark = model_folder.parent / "ran"
    monkeypatch.setenv("PAYLOAD_MARK", str(mark))
    (model_folder / "model.safetensors").unlink()
    with open(model_folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(), f)
    _one_line(cli("eval", str(model_folder), "--data", f"t={model_folder.parent / 't.jsonl'}", "--seeds", "1",
                  "--out", str(model_folder.parent / "out")), "loading them could run code", "safetensors")
    assert not mark.exists() and not (model_folder.parent / "out").exists()


def _stale(path: Path, pid: int, tail: str = "") -> Path:
    """The temporary name under which process ``pid`` of this host would have written ``path``."""
    return path.with_name(temp_sibling(path).name.replace(f"-{os.getpid()}", f"-{pid}") + tail)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_the_sweep_removes_only_this_hosts_temporaries_of_dead_processes(tmp_path):
    dead, folder = _dead_pid(), tmp_path / "out"
    (folder / "records").mkdir(parents=True)
    mine_dead = [_stale(folder / "models" / "kd", dead), _stale(folder / "records" / "kd.json", dead, "-a1b2")]
    mine_dead[0].mkdir(parents=True)
    (mine_dead[0] / "model.safetensors").write_bytes(b"x" * 100)
    mine_dead[1].write_text("{")
    alive = temp_sibling(folder / "records" / "sft.json")  # this process: still writing
    other_host = folder / "records" / f".gkd.json.tmp-00000000-{dead}"
    not_ours = [folder / "records" / ".cache", folder / "records" / "kd.json.tmp", folder / "records" / "kd.json"]
    for path in (alive, other_host, *not_ours):
        path.write_text("{}")
    assert sorted(sweep_stale(folder)) == sorted(mine_dead)
    assert not any(p.exists() for p in mine_dead)
    assert all(p.exists() for p in (alive, other_host, *not_ours))
    assert sweep_stale(tmp_path / "missing") == []


def test_eval_sweeps_what_a_killed_eval_left_in_its_folder(model_folder, cli):
    out = model_folder.parent / "out"
    stale = _stale(out / "records" / "model.json", _dead_pid(), "-zz")
    stale.parent.mkdir(parents=True)
    stale.write_text('{"label": ')
    proc = cli("eval", str(model_folder), "--data", f"t={model_folder.parent / 't.jsonl'}", "--seeds", "1",
               "--max-new-tokens", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and len(list((out / "records").glob("*.json"))) == 1
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_a_setting_refused_after_the_model_loads_leaves_no_output_folder(model_folder, cli):
    out = model_folder.parent / "out"
    proc = cli("eval", str(model_folder), "--data", f"t={model_folder.parent / 't.jsonl'}", "--seeds", "1",
               "--max-length", "100000", "--max-new-tokens", "90000", "--out", str(out))
    assert proc.returncode == 2 and "past the model's 512 positions" in proc.stderr.splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_eval_of_a_missing_model_fails_before_the_suite_is_built(tmp_path, cli, monkeypatch):
    import mgsr_bench.suite.build as build

    def no_build(*args, **kwargs):
        raise AssertionError("the suite was built before the model was looked for")

    monkeypatch.setattr(build, "ensure_suite", no_build)
    proc = cli("eval", "no/such/model", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe, args, says", [
    ("kd", ["--steps", "0"], "steps must be"),
    ("big.yaml", [], "cannot fill one global batch of 4096"),
])
def test_a_training_setting_refused_leaves_no_output_folder(hub_style_pair, cli, recipe, args, says):
    p = hub_style_pair
    (p / "big.yaml").write_text("method: kd\ntrain: {micro_batch: 4096}\n")
    proc = cli("train", recipe if recipe == "kd" else str(p / recipe), "--teacher", str(p / "teacher"), "--student",
               str(p / "student"), "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"),
               "--out", str(p / "run"), *args)
    assert proc.returncode == 2 and says in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr, \
        proc.stderr
    assert not (p / "run").exists()


def test_train_sweeps_the_model_copy_and_checkpoint_a_killed_run_left(hub_style_pair, cli):
    """The state a SIGKILL just before the final renames leaves: a whole hidden model copy and a
    checkpoint temporary, both of a process that is gone. The same command run again removes them."""
    p, dead = hub_style_pair, _dead_pid()
    run = p / "run"
    stale = [_stale(run / "model", dead), _stale(run / "checkpoints" / "step-0000002.pt", dead)]
    stale[0].mkdir(parents=True)
    (stale[0] / "model.safetensors").write_bytes(b"x" * 1000)
    stale[1].parent.mkdir(parents=True)
    stale[1].write_bytes(b"x")
    proc = cli("train", "kd", "--teacher", str(p / "teacher"), "--student", str(p / "student"), "--train-data",
               str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--steps", "2", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert (run / "model" / "config.json").is_file() and not any(path.exists() for path in stale)
    assert not [path for path in run.rglob(".*") if ".tmp-" in path.name]
