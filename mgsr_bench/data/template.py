"""The Alpaca-style prompt template used by MiniLLM, DistiLLM and the MGSR paper.

Kept byte-identical to MiniLLM's ``process_data_dolly.py`` (non-Qwen branch) so that prompts built
here match the ``prompt`` field of the published evaluation files.
"""

from __future__ import annotations

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def build_prompt(instruction: str, input: str = "") -> str:
    """Format one record's prompt; the ``### Input`` block appears only for a non-empty input."""
    if input:
        return _WITH_INPUT.format(instruction=instruction, input=input)
    return _NO_INPUT.format(instruction=instruction)
