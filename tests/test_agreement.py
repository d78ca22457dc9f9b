"""Teacher-forced agreement (`mgsr-bench agreement`): the per-position values by hand, the token
means independent of batching and padding, and the command on saved models, bad input included."""

import json
import math

import pytest
import torch

from mgsr_bench.data.collate import tokenize_records
from mgsr_bench.eval.agreement import agreement, position_values

from conftest import tiny_model


def test_position_values_by_hand():
    teacher = torch.tensor([[10.0, 0.0, 0.0, 0.0]])  # p = (0.99986, 4.5e-5 x 3)
    student = torch.zeros(1, 4)  # q uniform
    values = position_values(student, teacher, torch.tensor([1]), threshold=1e-3)
    p = torch.softmax(teacher, -1)[0]
    assert values["off_support"].item() == pytest.approx(0.75)  # the three tokens under 1e-3
    assert values["entropy"].item() == pytest.approx(math.log(4))
    assert values["nll"].item() == pytest.approx(math.log(4))
    assert values["forward_kl"].item() == pytest.approx(float((p * (p.log() - math.log(0.25))).sum()), rel=1e-5)
    assert values["reverse_kl"].item() == pytest.approx(float((0.25 * (math.log(0.25) - p.log())).sum()), rel=1e-5)
    assert values["top1"].item() == 1.0  # ties go to the first token, the teacher's
    assert position_values(student, teacher, torch.tensor([1]), threshold=1e-5)["off_support"].item() == 0.0


def test_token_means_do_not_depend_on_batching_and_the_teacher_is_its_own_floor(tokenizer, records):
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).eval()
    student = tiny_model(len(tokenizer), seed=1).eval()
    examples = tokenize_records(records[:12], tokenizer)
    args = (examples, len(tokenizer), tokenizer.pad_token_id)
    one, padded = agreement(student, teacher, *args, batch_size=1), agreement(student, teacher, *args, batch_size=5)
    assert one["tokens"] == padded["tokens"] == sum(len(e.response_ids) for e in examples)
    for name in one:
        assert padded[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), name
    floor = agreement(teacher, teacher, *args)
    assert floor["forward_kl"] == pytest.approx(0, abs=1e-6) and floor["reverse_kl"] == pytest.approx(0, abs=1e-6)
    assert floor["top1"] == 1.0 and one["forward_kl"] > 0.01


def test_the_command_scores_the_teacher_and_each_model(hub_style_pair, cli):
    p = hub_style_pair
    out = p / "agreement.json"
    proc = cli("agreement", str(p / "student"), "--teacher", str(p / "teacher"), "--data", str(p / "test.jsonl"),
               "--limit", "10", "--dtype", "bfloat16", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["references"] == 10 and set(result["models"]) == {"teacher", "student"}
    assert result["models"]["teacher"]["top1"] == 1.0 and result["models"]["student"]["forward_kl"] > 0
    assert "| student" in proc.stdout
    arith = [r for r in map(json.loads, (p / "test.jsonl").read_text().splitlines()) if r["family"] == "arith"]
    proc = cli("agreement", str(p / "student"), "--teacher", str(p / "teacher"), "--data", str(p / "test.jsonl"),
               "--family", "arith", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["references"] == len(arith) > 0


@pytest.mark.parametrize("case", ["threshold", "limit", "empty data", "family", "other tokenizer"])
def test_bad_input_is_one_line_and_writes_nothing(hub_style_pair, cli, case):
    from mgsr_bench.suite.tokenizer import train_tokenizer

    p = hub_style_pair
    model, data, extra = p / "student", p / "test.jsonl", []
    if case == "threshold":
        extra, message = ["--threshold", "1"], "--threshold must be in (0, 1), got 1.0"
    elif case == "limit":
        extra, message = ["--limit", "0"], "--limit must be >= 1, got 0"
    elif case == "family":
        extra, message = ["--family", "poems"], "no reference of family 'poems'; these references' families: arith, "
    elif case == "empty data":
        data, message = p / "empty.jsonl", "empty data file"
        data.write_text("")
    else:
        model, message = p / "other", "teacher and student tokenizers differ"
        tiny_model(300).save_pretrained(model)
        train_tokenizer(["completely different text " * 50], 300, model)
    out = p / "agreement.json"
    proc = cli("agreement", str(model), "--teacher", str(p / "teacher"), "--data", str(data), "--output", str(out),
               *extra)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
