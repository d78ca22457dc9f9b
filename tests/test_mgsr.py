"""MGSR's three components (SCRG, DAC-KL, span loss) and the method's recipes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mgsr_bench.config import available_recipes, load_recipe, train_config
from mgsr_bench.errors import UserError
from mgsr_bench.data.collate import JOINED, ORIGINS, Example, TokenBatch, tokenize_records
from mgsr_bench.data.spans import extract_spans, span_links, token_pieces
from mgsr_bench.losses.chunked import chunked_linear_loss
from mgsr_bench.losses.dac_kl import BandNet, band_kl, dac_kl, teacher_head
from mgsr_bench.losses.span import span_pair_losses
from mgsr_bench.methods import get_method
from mgsr_bench.methods.mgsr import PAIRS
from mgsr_bench.sampling import decode
from mgsr_bench.sampling.scrg import SCRG
from mgsr_bench.sampling.sources import Sampler
from mgsr_bench.train import train

from conftest import SHARED, tiny_model


# --- SCRG ----------------------------------------------------------------------------------------

class _FixedLogits(torch.nn.Module):
    """A "model" whose logits at sequence position t are a fixed table row: hand-built distributions."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (T, V)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        return type("Out", (), {"logits": self.table[:t].unsqueeze(0).expand(b, t, -1)})()


def _peaked(tokens: list[int], vocab: int, strength: list[float]) -> torch.Tensor:
    table = torch.zeros(len(tokens) + 1, vocab)  # the last sequence position predicts nothing
    for i, (tok, s) in enumerate(zip(tokens, strength)):
        table[i, tok] = s
    return table


def test_scrg_picks_the_largest_difference_among_mismatched_positions():
    vocab, prompt = 6, [5]
    # positions predict response tokens 0..3 from sequence positions 0..3 (the prompt has one token)
    teacher = _FixedLogits(_peaked([1, 2, 3, 4], vocab, [8.0, 8.0, 8.0, 8.0]))
    student = _FixedLogits(_peaked([1, 2, 3, 4], vocab, [0.0, 6.0, 1.0, 3.0]))
    scrg = SCRG()
    # the response agrees with the teacher at 0 (largest d) and differs at 1, 2, 3
    response = [1, 0, 0, 0]
    d = [float(torch.nn.functional.kl_div(F.log_softmax(student.table[i], -1), F.log_softmax(teacher.table[i], -1),
                                          log_target=True, reduction="sum")) for i in range(4)]
    (c,) = scrg.find_corrections([Example(prompt, response)], student, teacher, [0], 0, vocab)
    expected = max((1, 2, 3), key=lambda i: d[i])
    assert d[0] > d[expected]  # the matching position would have won without the mismatch rule
    assert c.position == expected and c.token == [1, 2, 3, 4][expected]
    assert c.difference == pytest.approx(d[expected], rel=1e-5)
    # rounds look only past the previous correction
    (later,) = scrg.find_corrections([Example(prompt, response)], student, teacher, [expected + 1], 0, vocab)
    assert later is None or later.position > expected
    # a response that agrees everywhere is left alone
    assert scrg.find_corrections([Example(prompt, [1, 2, 3, 4])], student, teacher, [0], 0, vocab) == [None]


def test_scrg_corrects_keeps_the_prefix_and_regenerates(tokenizer, records):
    student, teacher = tiny_model(len(tokenizer), seed=1), tiny_model(len(tokenizer), seed=2, hidden=48)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [e.prompt_ids for e in tokenize_records(records[:6], tokenizer)]
    torch.manual_seed(0)
    samples = [Example(p, r or [eos], origin="student")
               for p, r in zip(prompts, decode(student, prompts, eos, pad, 12).tokens)]
    scrg = SCRG(rounds=1)
    found = scrg.find_corrections(samples, student, teacher, [0] * len(samples), pad, len(tokenizer))
    revision = Sampler(_greedy(eos, pad), eos, pad, len(tokenizer), 12)
    revised, stats = scrg(samples, student, teacher, revision)
    assert stats["scrg_corrected"] == sum(c is not None for c in found) / len(samples) > 0
    for before, after, c in zip(samples, revised, found):
        assert after.prompt_ids == before.prompt_ids and after.origin == "student"
        if c is None:
            assert after.response_ids == before.response_ids
            continue
        assert after.response_ids[: c.position] == before.response_ids[: c.position]  # prefix kept
        assert after.response_ids[c.position] == c.token  # the teacher's token
        assert len(after.response_ids) <= 12
    assert 0 <= stats["scrg_rel_position"] < 1 and stats["scrg_difference"] > 0
    assert SCRG(rounds=0)(samples, student, teacher, revision)[0] == samples


def _greedy(eos, pad):
    def generate(model, prompts, max_new_tokens, keep_logits=False):
        return decode(model, prompts, eos, pad, max_new_tokens, greedy=True, keep_logits=keep_logits)
    return generate


def test_scrg_regenerates_each_row_within_its_own_budget_at_the_models_position_limit(tokenizer, records):
    """Rows corrected at different positions keep different prefixes, so each has its own token
    budget left; a GPT-2 student with exactly the positions prompt + limit need must revise them
    all (a shared budget, the largest, would run the longer prefixes past the last position)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eos, pad, limit = tokenizer.eos_token_id, tokenizer.pad_token_id, 12
    width = 8  # every prompt cut to the same length: the position limit binds each row alike
    prompts = [e.prompt_ids[:width] for e in tokenize_records(records[:8], tokenizer)]
    torch.manual_seed(0)
    student, teacher = (GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=n, n_layer=1, n_head=2,
                                                   n_positions=width + limit)).eval() for n in (32, 48))
    samples = [Example(p, r or [eos], origin="student")
               for p, r in zip(prompts, decode(student, prompts, eos, pad, limit).tokens)]
    scrg = SCRG(rounds=1)
    found = scrg.find_corrections(samples, student, teacher, [0] * len(samples), pad, len(tokenizer))
    regenerated = {c.position for c in found if c is not None and c.token != eos and c.position < limit - 1}
    assert len(regenerated) >= 2, found  # different prefixes, different budgets
    revised, _ = scrg(samples, student, teacher, Sampler(_greedy(eos, pad), eos, pad, len(tokenizer), limit))
    for before, after, c in zip(samples, revised, found):
        assert len(after.response_ids) <= limit
        if c is not None:
            assert after.response_ids[: c.position + 1] == before.response_ids[: c.position] + [c.token]


def test_scrg_batched_equals_row_by_row(tokenizer, records):
    student = tiny_model(len(tokenizer), seed=1).double()
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).double()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [e.prompt_ids for e in tokenize_records(records[:5], tokenizer)]
    torch.manual_seed(1)
    samples = [Example(p, r or [eos], origin="student")
               for p, r in zip(prompts, decode(student, prompts, eos, pad, 10).tokens)]
    scrg = SCRG(rounds=2)
    batched, _ = scrg(samples, student, teacher, Sampler(_greedy(eos, pad), eos, pad, len(tokenizer), 10, 3))
    single = [scrg([s], student, teacher, Sampler(_greedy(eos, pad), eos, pad, len(tokenizer), 10))[0][0]
              for s in samples]
    assert batched == single


def test_scrg_on_the_samplers_logits_equals_scrg_with_its_own_student_pass(tokenizer, records):
    student = tiny_model(len(tokenizer), seed=1).double()
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).double()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [e.prompt_ids for e in tokenize_records(records[:6], tokenizer)]
    drawn = decode(student, prompts, eos, pad, 10, keep_logits=True, generator=torch.Generator().manual_seed(2))
    samples = [Example(p, r, origin="student") for p, r in zip(prompts, drawn.tokens)]
    revision = Sampler(_greedy(eos, pad), eos, pad, len(tokenizer), 10, 4)
    scrg = SCRG(rounds=2)
    own, own_stats = scrg(samples, student, teacher, revision)
    reused, reused_stats = scrg(samples, student, teacher, revision, drawn.logits)
    assert reused == own and own_stats["scrg_corrected"] > 0
    assert reused_stats["scrg_difference"] == pytest.approx(own_stats["scrg_difference"], rel=1e-5)


# --- DAC-KL --------------------------------------------------------------------------------------

def _logits(n=4, v=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * 2, torch.randn(n, v, generator=g, dtype=torch.float64) * 2


def test_dac_kl_with_a_band_over_the_whole_head_is_kl_on_the_renormalised_head_plus_target():
    s, t = _logits()
    k = 5
    log_p, sorted_probs, ids, _ = teacher_head(t, k)
    target = torch.tensor([ids[0, 0].item(), ids[1, 3].item(), 11 if 11 not in ids[2] else 0, ids[3, 4].item()])
    loss, kept = dac_kl(s, log_p, sorted_probs, ids, target, torch.tensor(-10.0), torch.tensor(10.0), sharpness=1e-3)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    for row in range(4):
        support = sorted(set(ids[row].tolist()) | {int(target[row])})
        P, Q = p[row, support] / p[row, support].sum(), q[row, support] / q[row, support].sum()
        assert loss[row].item() == pytest.approx(float((P * (P / Q).log()).sum()), rel=1e-6)
        assert kept[row].item() == pytest.approx(float(p[row, support].sum()), rel=1e-6)


def test_dac_kl_fixed_band_matches_a_hand_computation():
    p = torch.tensor([[0.5, 0.25, 0.15, 0.1]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    log_p, sorted_probs, ids, _ = teacher_head(p.log(), 4)
    lower, upper, s = 0.55, 0.85, 0.02
    loss, _ = dac_kl(q.log(), log_p, sorted_probs, ids, torch.tensor([0]),
                     torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64), s)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    cum = [0.0, 0.5, 0.75, 0.9]  # mass before each rank; ranks are ids 0..3 here
    w = [0.0] + [sig((cum[k] + p[0, k].item() - lower) / s) * sig((upper - cum[k]) / s) for k in (1, 2, 3)]
    P = [w[k] * p[0, k].item() for k in range(4)] + [p[0, 0].item()]
    Q = [w[k] * q[0, k].item() for k in range(4)] + [q[0, 0].item()]
    P, Q = [x / sum(P) for x in P], [x / sum(Q) for x in Q]
    expected = sum(a * math.log(a / b) for a, b in zip(P, Q) if a > 0)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # the band keeps ranks 2 and 3 (intervals [0.5, 0.75] and [0.75, 0.9] overlap [0.55, 0.85]), not rank 4
    assert w[1] > 0.9 and w[2] > 0.9 and w[3] < 0.1


def test_dac_kl_gradients_reach_the_student_and_the_subnetwork():
    s, t = _logits(n=6, v=40)
    s.requires_grad_(True)
    method = get_method("mgsr")
    net = method.module()
    tokens = TokenBatch(torch.randint(0, 40, (6,)))
    loss = method.dac_term(s, t, tokens).sum()
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    fixed = get_method("mgsr", subnet="fixed")
    assert fixed.module() is None


def _train_band(gamma: float, steps: int = 150) -> float:
    torch.manual_seed(0)
    t = torch.randn(64, 50) * 3
    s = t + torch.randn(64, 50)  # a student near the teacher, as after SFT initialisation
    method = get_method("mgsr", coverage_weight=gamma)
    net = method.module()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    tokens = TokenBatch(t.argmax(-1))
    for _ in range(steps):
        opt.zero_grad()
        method.dac_term(s, t, tokens).sum().backward()
        opt.step()
    method.step_stats()
    method.dac_term(s, t, tokens)
    return method.step_stats()["mgsr_kept"]


def test_coverage_term_prevents_an_empty_band():
    without, with_coverage = _train_band(0.0), _train_band(1.0)
    assert without < 0.6  # minimising L_DAC alone shrinks the band to nothing: only the target is left
    assert with_coverage > 0.85 and with_coverage > without + 0.2  # near rho = 0.9


def test_adversarial_subnetwork_ascends_the_dac_loss():
    s, t = _logits(n=6, v=40)
    tokens = TokenBatch(torch.randint(0, 40, (6,)))
    grads = {}
    for mode in ("joint", "adversarial"):
        method = get_method("mgsr", subnet=mode, coverage_weight=0.0)
        torch.manual_seed(0)
        method._band_net.load_state_dict(BandNet().state_dict())
        method.dac_term(s, t, tokens).sum().backward()
        grads[mode] = [p.grad.clone() for p in method.module().parameters()]
    for a, b in zip(grads["joint"], grads["adversarial"]):
        torch.testing.assert_close(a, -b)


def test_dac_kl_drop_keeps_its_values():
    """``outside: drop`` (the default) gives the values DAC-KL gave before the option existed."""
    s, t = _logits()
    log_p, sorted_probs, ids, _ = teacher_head(t, 6)
    target = torch.tensor([5, 6, 0, 3])  # rank 1, rank 4, rank 4 and beyond the six ranks
    lower = torch.tensor([0.1, 0.2, 0.3, 0.05], dtype=torch.float64)
    upper = torch.tensor([0.7, 0.9, 0.6, 0.95], dtype=torch.float64)
    before = {True: [0.000347180339515332, 0.547355788000341, 3.71483619393036, 1.60242398195202],
              False: [5.08418962029956, 1.25668192251433, 2.74492240695806, 2.35094962770071]}
    for renormalize, expected in before.items():
        loss, kept = dac_kl(s, log_p, sorted_probs, ids, target, lower, upper, 0.02, renormalize)
        dropped, _ = dac_kl(s, log_p, sorted_probs, ids, target, lower, upper, 0.02, renormalize, outside="drop")
        assert loss.tolist() == pytest.approx(expected, rel=1e-12)
        assert torch.equal(loss, dropped)
        assert kept.tolist() == pytest.approx([0.86372382170218, 0.917984021264035, 0.738204263867013,
                                               0.900347068884118], rel=1e-12)


def _reference_band_kl(t, s, w, target, k, renormalize, outside):
    """Steps 5-6 of the spec for one row, in plain float64 arithmetic: ``w`` per teacher rank."""
    p, q = F.softmax(t, -1).tolist(), F.softmax(s, -1).tolist()
    ranks = sorted(range(len(p)), key=lambda v: -p[v])[:k]
    P = [w[r] * p[v] for r, v in enumerate(ranks) if v != target] + [p[target]]
    Q = [w[r] * q[v] for r, v in enumerate(ranks) if v != target] + [q[target]]
    if outside == "bucket":
        P, Q = P + [1 - sum(P)], Q + [1 - sum(Q)]
    if renormalize:
        P, Q = [x / sum(P) for x in P], [x / sum(Q) for x in Q]
    kl = sum(a * math.log(a / b) for a, b in zip(P, Q) if a > 0)
    return kl if renormalize else kl - sum(P) + sum(Q)


def _hand_band(ids, target, w):
    """log of hand-made band weights per rank, ``-inf`` at the target's rank (band_kl's contract)."""
    log_w = torch.tensor(w, dtype=torch.float64).log().expand(ids.shape).clone()
    return log_w.masked_fill(ids == target.unsqueeze(-1), float("-inf"))


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("outside", ["drop", "bucket"])
def test_band_kl_matches_a_float64_reference(outside, renormalize):
    s, t = _logits(n=3, v=7, seed=3)
    k, w = 4, [0.95, 0.6, 0.3, 0.05]
    log_p, _, ids, _ = teacher_head(t, k)
    target = torch.tensor([ids[0, 0].item(), ids[1, 2].item(),
                           next(v for v in range(7) if v not in ids[2])])  # rank 1, rank 3, beyond the ranks
    loss, _ = band_kl(log_p, F.log_softmax(s, -1), _hand_band(ids, target, w), ids, target, renormalize, outside)
    for row in range(3):
        expected = _reference_band_kl(t[row], s[row], w, int(target[row]), k, renormalize, outside)
        assert loss[row].item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_bucket_penalises_the_students_mass_outside_the_band_when_the_band_matches():
    """The student holds the teacher's in-band and target proportions, at half the mass, and puts the
    rest outside: ``drop`` sees nothing (0), ``bucket`` sees the two-entry KL of the kept masses."""
    _, t = _logits(n=2, v=9, seed=5)
    k, w = 4, [0.9, 0.7, 0.4, 0.2]
    p = F.softmax(t, -1)
    log_p, _, ids, _ = teacher_head(t, k)
    target = ids[:, 0]
    ranked = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    held = (p * ranked).sum(-1, keepdim=True)  # the teacher's mass on its ranks (the target among them)
    q = torch.where(ranked, 0.5 * p, p * (1 - 0.5 * held) / (1 - held))
    log_w = _hand_band(ids, target, w)
    drop, kept = band_kl(log_p, q.log(), log_w, ids, target, outside="drop")
    bucket, _ = band_kl(log_p, q.log(), log_w, ids, target, outside="bucket")
    two_entry = kept * math.log(2) + (1 - kept) * ((1 - kept) / (1 - 0.5 * kept)).log()
    torch.testing.assert_close(drop, torch.zeros_like(drop), atol=1e-12, rtol=0)
    torch.testing.assert_close(bucket, two_entry, rtol=1e-10, atol=0)
    assert (bucket > 0.05).all()


def test_bucket_keeps_a_small_outside_mass_exact_in_float32():
    """A student with about 1e-6 of its mass outside the band: float32 holds it to float32's precision
    (summed over what is left out), where ``1 - sum`` would keep only a few bits of it."""
    t = torch.randn(2, 9, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    k, w = 4, [1 - 2 ** -20] * 4  # exact in float32 too
    log_p, _, ids, _ = teacher_head(t, k)
    s = torch.zeros_like(t).scatter(-1, ids, 20.0)  # the student's mass sits on the teacher's ranks
    target = ids[:, 0]
    expected = [_reference_band_kl(t[r], s[r], w, int(target[r]), k, True, "bucket") for r in range(2)]
    log_p32 = F.log_softmax(t.float(), -1)
    loss, _ = band_kl(log_p32, F.log_softmax(s.float(), -1), _hand_band(ids, target, w).float(), ids, target,
                      outside="bucket")
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_bucket_gradients_reach_the_student_and_the_subnetwork_and_stay_finite():
    s, t = _logits(n=6, v=40)
    tokens = TokenBatch(torch.randint(0, 40, (6,)))
    for sharpness in (0.02, 1e-6):  # 1e-6: band weights round to exactly 1, where log(1 - w) is -inf
        method = get_method("mgsr", outside="bucket", sharpness=sharpness)
        student = s.clone().requires_grad_(True)
        method.dac_term(student, t, tokens).sum().backward()
        assert student.grad.abs().sum() > 0 and torch.isfinite(student.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in method.module().parameters())
        if sharpness == 0.02:  # (a band of hard edges gives f_phi next to no gradient)
            assert all(p.grad.abs().sum() > 0 for p in method.module().parameters())


def test_bucket_chunked_equals_the_full_logits():
    torch.manual_seed(0)
    n, h, v = 12, 8, 37
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    t_hidden, t_weight = torch.randn(n, 6, dtype=torch.float64) * 3, torch.randn(v, 6, dtype=torch.float64)
    tokens = TokenBatch(torch.randint(0, v, (n,)))
    method = get_method("mgsr", outside="bucket", span_weight=0.0, top_k_max=16)
    params = list(method.module().parameters())
    full = method.token_losses(hidden @ weight.T, t_hidden @ t_weight.T, tokens).sum()
    expected = torch.autograd.grad(full, [hidden, weight, *params])
    chunked = chunked_linear_loss(hidden, weight, t_hidden, t_weight, tokens, method.token_losses, 5, params)
    chunked.backward()
    torch.testing.assert_close(chunked, full)
    for got, want in zip([hidden.grad, weight.grad, *(p.grad for p in params)], expected):
        torch.testing.assert_close(got, want)


def test_outside_is_validated_and_recorded_only_when_not_its_default():
    with pytest.raises(UserError, match=r"outside must be one of drop, bucket, got 'keep'") as refused:
        get_method("mgsr", outside="keep")
    assert "\n" not in str(refused.value)
    assert get_method("mgsr").options()["outside"] == "drop"
    assert get_method("mgsr", outside="bucket").options()["outside"] == "bucket"


# --- span loss -----------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "tokenizers" / "gpt2").is_dir(), reason="../shared/tokenizers/gpt2 is absent")
def test_rule_spans_with_the_gpt2_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "gpt2")
    text = "The quick brown fox jumped over the lazy dog, and it was 12345 metres away."
    ids = tok(text).input_ids + [tok.eos_token_id]
    assert "".join(token_pieces(tok, ids[:-1])) == text
    rule = [tok.decode(ids[a:b]) for a, b in extract_spans(tok, ids, "rule")]
    assert rule == ["The quick brown fox jumped", " over the lazy dog", " and it", " was 12345 metres away"]
    assert [tok.decode(ids[a:b]) for a, b in extract_spans(tok, ids, "word")] == [" 12345"]
    assert extract_spans(tok, ids, "rule", max_tokens=2)[0] == (0, 2)
    with pytest.raises(ValueError, match="span mode"):
        extract_spans(tok, ids, "nouns")


def test_rule_spans_with_the_tiny_suite_tokenizer(tokenizer):
    text = "Clara moved to Lisbon in 1987 and sold 345 apples."
    ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    spans = extract_spans(tokenizer, ids, "word")
    words = [tokenizer.decode(ids[a:b]).strip() for a, b in spans]
    assert "1987" in words and "345" in words  # digits are split into tokens and regrouped into words
    for a, b in extract_spans(tokenizer, ids, "rule"):
        assert 2 <= b - a <= 8 and ids[b - 1] != tokenizer.eos_token_id
    links = span_links(len(ids), spans)
    assert sum(links) == sum(b - a - 1 for a, b in spans)


def test_spacy_mode_fails_clearly_when_spacy_is_missing(tokenizer):
    try:
        import spacy  # noqa: F401
    except ImportError:
        from mgsr_bench.errors import UserError

        with pytest.raises(UserError, match="spaCy"):
            extract_spans(tokenizer, tokenizer("a b c").input_ids, "spacy")
        with pytest.raises(UserError, match="spaCy"):  # refused when the method is built, before any compute
            get_method("mgsr", spans="spacy")
    else:
        pytest.skip("spaCy is installed")


@pytest.mark.parametrize("relation", ["hadamard", "cosine"])
def test_span_loss_is_zero_for_equal_models_and_positive_otherwise(relation):
    s, t = _logits(n=6, v=30)
    link = torch.tensor([True, True, False, True, False, False])
    assert span_pair_losses(t, t, link, relation=relation).abs().max() < 1e-15
    losses = span_pair_losses(s, t, link, relation=relation)
    assert (losses[link] > 0).all() and (losses[~link] == 0).all()


def test_span_loss_uses_the_teacher_top_k_support_of_the_product():
    s, t = _logits(n=2, v=30)
    link = torch.tensor([True, False])
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    r_t, r_s = p[0] * p[1], q[0] * q[1]
    support = r_t.topk(5).indices
    expected = ((r_t[support] - r_s[support]) ** 2).sum()
    assert span_pair_losses(s, t, link, top_k=5)[0].item() == pytest.approx(expected.item(), rel=1e-10)


# --- the method ----------------------------------------------------------------------------------

def test_mgsr_sft_term_only_on_ground_truth_rows_and_span_term_as_a_pair_mean():
    s, t = _logits(n=4, v=20)
    targets = torch.tensor([1, 2, 3, 4])
    origin = torch.tensor([ORIGINS.index("ground_truth")] * 2 + [ORIGINS.index("student")] * 2)
    sft_only = get_method("mgsr", dac_weight=0.0, span_weight=0.0)
    loss = sft_only.token_losses(s, t, TokenBatch(targets, origin))
    ce = F.cross_entropy(s, targets, reduction="none")
    torch.testing.assert_close(loss, torch.cat([ce[:2], torch.zeros(2, dtype=ce.dtype)]))
    span_only = get_method("mgsr", sft_weight=0.0, dac_weight=0.0)
    link = torch.tensor([True, False, True, False])
    loss = span_only.token_losses(s, t, TokenBatch(targets, origin, {JOINED: link}, {"tokens": 2, PAIRS: 1}))
    torch.testing.assert_close(loss, 2.0 * span_pair_losses(s, t, link))


def test_mgsr_trains_with_scrg_revised_samples_and_logs_every_component(tokenizer, records):
    examples = tokenize_records(records[:32], tokenizer)
    valid, valid_ex = records[32:40], tokenize_records(records[32:40], tokenizer)
    cfg = train_config({"steps": 2, "micro_batch": 8, "val_metric": "loss", "val_size": 8, "eval_every": 1,
                        "gen_max_new_tokens": 12})
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).eval()
    method = get_method("mgsr", init_threshold=1.0, capacity=8, replay_ratio="constant")
    before = [p.detach().clone() for p in method.module().parameters()]
    result = train(tiny_model(len(tokenizer), seed=1), teacher, tokenizer, method, examples, valid, valid_ex, cfg)
    history = result.history
    assert set(result.method_state) == {"module", "optimizer"}  # f_phi and its own optimiser state, for checkpoints
    assert history[0]["source"] == "student"
    first = history[0]
    for key in ("scrg_corrected", "mgsr_dac", "mgsr_lower", "mgsr_upper", "mgsr_kept"):
        assert key in first, key
    assert 0 < first["mgsr_lower"] < first["mgsr_upper"] < 1
    assert any(not torch.equal(a, b) for a, b in zip(before, method.module().parameters()))  # f_phi trained


@pytest.mark.slow
def test_every_mgsr_recipe_trains_a_step(tokenizer, records):
    examples = tokenize_records(records[:16], tokenizer)
    cfg = train_config({"steps": 1, "micro_batch": 8, "val_metric": "loss", "val_size": 8, "gen_max_new_tokens": 8})
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).eval()
    names = [n for n, p in available_recipes().items() if p.parent.name == "methods"]
    assert {"mgsr", "mgsr-no-scrg", "mgsr-fkl", "mgsr-no-span", "mgsr-scrg-fkl", "mgsr-dackl", "mgsr-dackl-fixed",
            "mgsr-rounds3", "mgsr-dackl-bucket"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        # start generating at once so that SCRG runs in this single step
        method = get_method(recipe.method, **{**recipe.options, "init_threshold": 1.0})
        result = train(tiny_model(len(tokenizer), seed=1), teacher, tokenizer, method, examples, records[16:24],
                       tokenize_records(records[16:24], tokenizer), cfg, desc=name)
        step = result.history[0]
        assert step["source"] == "student" and math.isfinite(step["loss"]), name
        assert ("scrg_corrected" in step) == (method.rounds > 0), name
