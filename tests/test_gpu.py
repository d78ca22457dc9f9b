"""GPU-only checks (skipped without CUDA): bf16 mixed precision in the shared harness, and
generation on the device. Run on a lent GPU with tests/gpu_check.sh."""

import pytest
import torch

from mgsr_bench.config import train_config
from mgsr_bench.data.collate import tokenize_records
from mgsr_bench.eval.generate import EvalSettings, generate
from mgsr_bench.methods import get_method
from mgsr_bench.train import train
from mgsr_bench.train.loop import resolve_mixed_precision

from conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_mixed_precision_is_bf16_on_a_bf16_gpu():
    assert resolve_mixed_precision("auto") == ("bf16" if torch.cuda.is_bf16_supported() else "no")


@pytest.mark.slow
def test_kd_trains_in_bf16_on_gpu(tokenizer, records, teacher):
    student = tiny_model(len(tokenizer), seed=1)
    cfg = train_config({"steps": 20, "micro_batch": 8, "grad_accum": 2, "lr": 5e-3, "eval_every": 20,
                        "val_metric": "loss", "val_size": 32})
    result = train(student, teacher, tokenizer, get_method("kd"), tokenize_records(records[:200], tokenizer),
                   records[200:], tokenize_records(records[200:], tokenizer), cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert next(student.parameters()).device.type == "cuda"
    assert next(student.parameters()).dtype == torch.float32  # fp32 master weights under autocast


def test_generation_on_gpu_matches_prompt_count(tokenizer, records):
    model = tiny_model(len(tokenizer)).cuda()
    prompts = [r["prompt"] for r in records[:10]]
    settings = EvalSettings(max_new_tokens=8, batch_size=4)
    out = generate(model, tokenizer, prompts, settings, seed=10)
    again = generate(model, tokenizer, prompts, settings, seed=10)
    assert len(out) == 10 and out == again


@pytest.mark.slow
def test_mgsr_trains_in_bf16_on_gpu_with_scrg_and_its_subnetwork(tokenizer, records, teacher):
    """SCRG generation, DAC-KL with f_phi and the span loss together under autocast on the device."""
    student = tiny_model(len(tokenizer), seed=1)
    cfg = train_config({"steps": 4, "micro_batch": 8, "eval_every": 2, "val_metric": "loss", "val_size": 16,
                        "gen_max_new_tokens": 12})
    method = get_method("mgsr", init_threshold=1.0, capacity=8, replay_ratio="constant")
    result = train(student, teacher, tokenizer, method, tokenize_records(records[:64], tokenizer),
                   records[200:], tokenize_records(records[200:], tokenizer), cfg)
    assert any("scrg_corrected" in h for h in result.history)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert next(method.module().parameters()).device.type == "cuda"
    assert set(result.method_state) == {"module", "optimizer"}



def test_eval_scores_a_saved_model_on_the_gpu(hub_style_pair, monkeypatch):
    """`mgsr-bench eval` moves each model to the GPU before it generates: it scores on the GPU, not the CPU."""
    import mgsr_bench.pipeline as pipeline
    from mgsr_bench.cli.main import main

    seen = []
    score = pipeline.evaluate_model

    def recording(model, *args, **kwargs):
        seen.append((next(model.parameters()).device.type, next(model.parameters()).dtype))
        return score(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_model", recording)
    p = hub_style_pair
    assert main(["eval", str(p / "student"), "--data", f"test={p / 'test.jsonl'}", "--seeds", "10",
                 "--dtype", "bfloat16", "--out", str(p / "eval")]) == 0
    assert seen == [("cuda", torch.bfloat16)]
