"""Train the tiny suite's byte-level BPE tokenizer with ``tokenizers``.

Digits are split one per token (as LLaMA and Qwen do) so that arithmetic answers are not hidden in
arbitrary multi-digit merges. The end-of-text token doubles as the padding token, exactly as with
GPT-2: the harness must therefore never infer the loss mask from ``input_ids == pad``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train on ``texts`` and save a standard Hugging Face tokenizer directory to ``out_dir``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token=EOS, padding_side="left", model_max_length=512)
    fast.save_pretrained(out_dir)
    return fast
