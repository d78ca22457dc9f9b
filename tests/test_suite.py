"""The tiny suite's open-ended families and its shipped models."""

import dataclasses
import json
import random
import shutil

import pytest

from mgsr_bench.errors import UserError
from mgsr_bench.eval.generate import EvalSettings
from mgsr_bench.models import load_tokenizer, weights_digest
from mgsr_bench.suite import build, shipped
from mgsr_bench.suite.open_ended import OPEN_FAMILIES, open_prompt, open_responses
from mgsr_bench.suite.tasks import EXACT_FAMILIES, generate_suite_data

TINY = build.SUITES["tiny"]


def test_an_open_prompt_has_many_responses_that_all_carry_its_slots():
    rng = random.Random(3)
    for family in OPEN_FAMILIES:
        for shifted in (False, True):
            prompt = open_prompt(family, rng, shifted)
            responses = open_responses(family, prompt, random.Random(5), 8)
            assert len(set(responses)) == 8
            first_sentences = {r.split(". ")[0] for r in responses}
            assert len(first_sentences) > 1, (family, "wording or order never varies")
            names = [v for k, v in prompt.slots.items() if k in ("name", "hero", "dish")]
            for r in responses:
                assert all(n in r for n in names), (family, r)
                assert 20 <= len(r.split()) <= 80, (family, len(r.split()), r)


def test_train_holds_the_teachers_first_response_and_evaluation_holds_references():
    data = generate_suite_data(90, 18, 18, seed=4, references=5, teacher_responses=3, n_teacher_extra=27)
    teacher_rows: dict[str, list[str]] = {}
    for r in data["teacher"]:
        teacher_rows.setdefault(r["prompt"], []).append(r["output"])
    assert len(teacher_rows) == 90 + 27
    for r in data["train"]:
        responses = teacher_rows[r["prompt"]]
        assert responses[0] == r["output"]
        assert len(responses) == (3 if r["family"] in OPEN_FAMILIES else 1)
    for split in ("valid", "test", "shifted"):
        for r in data[split]:
            if r["family"] in OPEN_FAMILIES:
                assert isinstance(r["output"], list) and len(set(r["output"])) == 5
            else:
                assert isinstance(r["output"], str)
        assert not {r["prompt"] for r in data[split]} & set(teacher_rows), split
    # drawing more references or teacher responses changes no prompt and no first response
    fewer = generate_suite_data(90, 18, 18, seed=4)
    assert [r["prompt"] for r in fewer["test"]] == [r["prompt"] for r in data["test"]]
    assert fewer["train"] == data["train"]


def test_the_shipped_suite_is_the_one_this_code_defines():
    """A changed generator, configuration or suite code version fails here: the shipped models
    would otherwise be paired with data they were not trained on."""
    folder = shipped.shipped_folder(TINY)
    assert folder is not None, "the default suite ships its models"
    manifest = shipped.read_manifest(folder)
    assert manifest["key"] == TINY.key()
    assert manifest["data"] == shipped.data_digests(build.suite_data(TINY))
    for name in ("teacher", "student-init"):
        assert weights_digest(folder / name) == manifest["weights"][name]
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 32 * 2**20


@pytest.mark.slow
def test_every_evaluation_prompt_fits_the_protocols_prompt_budget():
    """Evaluation cuts prompts to 256 tokens; a cut prompt loses its question or its `### Response:`."""
    tokenizer = load_tokenizer(shipped.SHIPPED / "tiny" / "tokenizer")
    data = build.suite_data(TINY)
    for split in ("valid", "test", "shifted"):
        longest = max(len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) for r in data[split])
        assert longest <= EvalSettings().max_prompt, (split, longest)


def test_open_responses_are_40_to_120_tokens_long():
    tokenizer = load_tokenizer(shipped.SHIPPED / "tiny" / "tokenizer")
    data = generate_suite_data(180, 18, 45, seed=0, references=4)
    for split in ("train", "test", "shifted"):
        lengths = [len(tokenizer(o, add_special_tokens=False).input_ids) for r in data[split]
                   if r["family"] in OPEN_FAMILIES for o in ([r["output"]] if split == "train" else r["output"])]
        assert lengths and 40 <= sum(lengths) / len(lengths) and max(lengths) <= 120, (split, min(lengths),
                                                                                       max(lengths))


def test_a_fresh_cache_installs_the_shipped_suite_without_building(monkeypatch, tmp_path):
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "build_suite", lambda *a: pytest.fail("the shipped suite was rebuilt"))
    suite = build.ensure_suite(TINY)
    manifest = shipped.read_manifest(shipped.shipped_folder(TINY))
    pair = suite.pair()
    assert (pair["teacher_weights"], pair["student_weights"]) == (manifest["weights"]["teacher"],
                                                                 manifest["weights"]["student-init"])
    assert suite.report["source"] == "shipped"
    assert {r["family"] for r in suite.split("test")} == set(EXACT_FAMILIES + OPEN_FAMILIES)
    assert [p.name for p in tmp_path.iterdir()] == [TINY.key()]


def _fake_shipped(tmp_path, monkeypatch, **changes):
    """A copy of the shipped folder with ``changes`` made to its manifest."""
    root = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED / "tiny", root / "tiny")
    manifest = shipped.read_manifest(root / "tiny")
    for key, value in changes.items():
        manifest[key] = value
    (root / "tiny" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(shipped, "SHIPPED", root)
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("changes, message", [
    ({"key": "tiny-0000000000000000"}, "configuration or SUITE_CODE_VERSION changed"),
    ({"data": {"train": "0" * 16, "test": "1" * 16}}, r"splits test, train\): the generator changed"),
    ({"weights": {"teacher": "0" * 16, "student-init": "0" * 16}}, "does not match its manifest"),
])
def test_shipped_models_that_do_not_belong_to_this_code_are_refused_in_one_line(tmp_path, monkeypatch,
                                                                                changes, message):
    _fake_shipped(tmp_path, monkeypatch, **changes)
    with pytest.raises(UserError, match=message) as refused:
        build.ensure_suite(TINY)
    assert "\n" not in str(refused.value) and "build-suite --from-scratch --ship" in str(refused.value)
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "a refused install left files in the cache"


@pytest.mark.slow
def test_a_build_from_scratch_ships_and_a_rebuild_here_matches_it_to_the_bit(tmp_path, monkeypatch):
    """The maintainer's path on a micro suite: build, ship, rebuild (the same weights on the same
    machine, the build's threads pinned), and a fresh cache installs the shipped files."""
    train = {"micro_batch": 16, "lr": 3e-3, "val_metric": "loss", "seed": 0}
    micro = build.SuiteConfig(name="tiny-micro", n_train=300, n_valid=16, n_test=9, n_teacher_extra=90,
                              teacher_responses=2, references=3, vocab_size=300,
                              teacher=build.ModelShape(64, 1, 2, 128), student=build.ModelShape(32, 1, 2, 64),
                              teacher_train={**train, "steps": 6, "eval_every": 3},
                              student_init_train={**train, "steps": 2, "eval_every": 2})
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    first = shipped.build_from_scratch(micro)
    assert "shipped" not in first
    folder = shipped.ship(micro, tmp_path / "cache" / f"{micro.key()}.scratch")
    assert shipped.read_manifest(folder)["weights"] == first["weights"]
    again = shipped.build_from_scratch(micro)
    assert again["weights"] == again["shipped"]["weights"] == first["weights"]
    assert again["shipped"]["teacher_train"]["best_step"] == first["report"]["teacher_train"]["best_step"]
    suite = build.ensure_suite(micro)
    assert suite.report["source"] == "shipped" and suite.pair()["teacher_weights"] == first["weights"]["teacher"]


@pytest.mark.slow
def test_a_build_that_keeps_the_teacher_trains_only_the_sft_init_and_only_from_the_same_inputs(tmp_path,
                                                                                               monkeypatch):
    """A smaller distillation set with the same teacher prompts keeps the shipped teacher; a change to
    the teacher's training is refused before anything is built."""
    train = {"micro_batch": 16, "lr": 3e-3, "val_metric": "loss", "seed": 0}
    micro = build.SuiteConfig(name="tiny-micro", n_train=300, n_valid=16, n_test=9, n_teacher_extra=90,
                              teacher_responses=2, references=3, vocab_size=300,
                              teacher=build.ModelShape(64, 1, 2, 128), student=build.ModelShape(32, 1, 2, 64),
                              teacher_train={**train, "steps": 6, "eval_every": 3},
                              student_init_train={**train, "steps": 2, "eval_every": 2})
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "cache"))
    first = shipped.build_from_scratch(micro)
    shipped.ship(micro, tmp_path / "cache" / f"{micro.key()}.scratch")
    smaller = dataclasses.replace(micro, n_train=150, n_teacher_extra=240)
    monkeypatch.setattr(build, "_train_stage", _only_the_sft_init(build._train_stage))
    kept = shipped.build_from_scratch(smaller, keep_teacher=True)
    assert kept["weights"]["teacher"] == first["weights"]["teacher"]
    assert kept["weights"]["student-init"] != first["weights"]["student-init"]
    assert kept["report"]["teacher_train"]["kept"]
    retrained = dataclasses.replace(smaller, teacher_train={**smaller.teacher_train, "steps": 7})
    with pytest.raises(UserError, match="trained from other inputs") as refused:
        shipped.build_from_scratch(retrained, keep_teacher=True)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "cache" / f"{retrained.key()}.scratch").exists()


def _only_the_sft_init(train_stage):
    def stage(*args, **kwargs):
        assert args[-1] != "build: teacher", "a build that keeps the teacher trained one"
        return train_stage(*args, **kwargs)
    return stage


@pytest.mark.parametrize("flag", ["--ship", "--keep-teacher"])
def test_shipping_or_keeping_the_teacher_needs_a_build_from_scratch(cli, flag):
    proc = cli("build-suite", flag)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"{flag} is for a build from scratch: "
                                                                  "add --from-scratch")
