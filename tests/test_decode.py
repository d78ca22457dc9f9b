"""The shared decoder against ``transformers``' generate, on four architectures with left padding."""

import pytest
import torch
from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig,
                          OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from mgsr_bench.data.collate import left_pad
from mgsr_bench.sampling import decode

V = 97
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            num_key_value_heads=2, intermediate_size=64)).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            num_key_value_heads=1, intermediate_size=64)).eval()
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, bos_token_id=0, eos_token_id=0, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    return OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32)).eval()


def _hf_greedy(model, eos, pad, n, ngram=None):
    ids, attn = left_pad(PROMPTS, pad)
    out = model.generate(input_ids=ids, attention_mask=attn, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=ngram))
    rows = out[:, ids.shape[1]:].tolist()
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "opt"])
def test_greedy_decoding_equals_generate_while_rows_finish_at_different_steps(kind):
    model = _model(kind)
    free = _hf_greedy(model, eos=V - 1, pad=1, n=8)  # an EOS that is (almost surely) never emitted
    # a token one row emits early and another row never: the first row ends there, the other goes on
    row, k, eos = next((r, k, t) for r, row in enumerate(free) for k, t in enumerate(row)
                       if 0 < k < 7 and t not in row[:k] and any(t not in other for other in free))
    expected = _hf_greedy(model, eos=eos, pad=1, n=8)
    got = decode(model, PROMPTS, eos, 1, 8, greedy=True).tokens
    assert got == expected
    assert len(got[row]) == k + 1 and got[row][-1] == eos  # a finished row keeps its EOS and nothing after it
    assert max(len(r) for r in got) == 8  # and another went on after it was dropped


def test_each_row_stops_at_its_own_limit_and_is_never_run_past_the_positions_it_needs():
    """Per-row limits (SCRG's re-generations): each row equals its own decode at its limit, and a
    GPT-2 with exactly the positions the longest prompt and its limit need decodes a batch whose
    larger limit belongs to a shorter prompt (one shared limit would run past its last position)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=12)).eval()
    limits = [6, 10, 8]  # prompt lengths 6, 2, 4: each row ends exactly at position 11
    got = decode(model, PROMPTS, V - 1, 1, limits, greedy=True)
    assert got.tokens == [decode(model, [p], V - 1, 1, n, greedy=True).tokens[0] for p, n in zip(PROMPTS, limits)]
    assert [len(t) for t in got.tokens] == limits  # no EOS drawn (V - 1, almost surely never): each ran to its limit
    with pytest.raises(IndexError):  # the shared limit the per-row ones replace
        decode(model, PROMPTS, V - 1, 1, max(limits), greedy=True)
    with pytest.raises(ValueError, match="2 token limits for 3 prompts"):
        decode(model, PROMPTS, V - 1, 1, [4, 4], greedy=True)


def test_the_ngram_ban_matches_generate():
    model = _model("llama")
    assert decode(model, PROMPTS, V - 1, 1, 12, greedy=True, no_repeat_ngram_size=2).tokens == \
        _hf_greedy(model, V - 1, 1, 12, ngram=2)


def test_kept_logits_are_the_models_logits_at_each_sampled_token():
    model = _model("llama").double()
    out = decode(model, PROMPTS, 3, 1, 10, keep_logits=True, generator=torch.Generator().manual_seed(0))
    for prompt, tokens, logits in zip(PROMPTS, out.tokens, out.logits):
        assert logits.shape == (len(tokens), V)
        full = model(input_ids=torch.tensor([prompt + tokens])).logits[0]
        torch.testing.assert_close(logits, full[len(prompt) - 1: -1].float(), rtol=1e-5, atol=1e-5)


def test_only_tokens_the_tokenizer_knows_are_drawn_and_the_mode_is_restored():
    model = _model("gpt2").train()
    out = decode(model, PROMPTS, 0, 1, 20, vocab_size=7)
    assert all(0 <= t < 7 for row in out.tokens for t in row)
    assert model.training


@pytest.mark.slow
def test_decoding_through_fsdp2_sharded_weights_equals_the_unsharded_model(tmp_path):
    """Two gloo processes on CPU, a student sharded with FSDP2: the ordinary sharded forward (each
    layer gathers its weights as it runs, one all-gather per layer per token) decodes exactly what
    the unsharded model does; inside ``gathered`` the weights are gathered once, each rank decodes
    its own prompts to its own length with no collective at all, and the results are the unsharded
    model's too; afterwards the weights are sharded again."""
    import json
    import os
    from pathlib import Path

    from conftest import torchrun

    worker = Path(__file__).with_name("sharded_decode_worker.py")
    torchrun([str(worker), str(tmp_path / "out.json")],
             {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)  # gloo, CPU
    ranks = json.loads((tmp_path / "out.json").read_text())
    for facts in ranks:
        assert facts["sharded_equal"] and facts["gathered_equal"] and facts["after_equal"] and facts["sharded_after"]
        assert facts["all_gathers_while_decoding"] == 0
        assert facts["gathered_all_gathers"] <= 3 < facts["per_layer_all_gathers"]  # 3 FSDP units, 8 tokens
    assert ranks[0]["lengths"] != ranks[1]["lengths"]  # the ranks ran different numbers of decoding steps
