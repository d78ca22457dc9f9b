"""Span extraction for MGSR's span-level loss: groups of response tokens that belong together.

Spans are found from the *text* of the tokens, so the same rules work for any tokenizer: each
token's piece of text is what it adds when decoded after a fixed anchor token (``decode([a, t])``
minus ``decode([a])``), which keeps the leading space that SentencePiece drops at the start of a
sequence; byte-level BPE such as GPT-2's and SentencePiece such as LLaMA's behave alike and no
tokenizer-specific markers like ``Ġ`` or ``▁`` are needed. Pieces are cached per token id. Modes (MGSR spec section 3, all "decided" details):

* ``rule`` (default): words are maximal runs of tokens where a token that does not start with
  whitespace continues the previous word (punctuation tokens are words of their own); phrases are
  runs of words split at punctuation and *before* a closed list of English function words
  (prepositions, conjunctions, relative pronouns, auxiliaries), so ``on the mat`` stays together;
* ``word``: the sub-word tokens of one word only;
* ``spacy``: noun chunks and verb groups from spaCy (optional extra; a clear error when absent).

Every mode keeps spans of at least 2 tokens and cuts longer ones into consecutive pieces of at
most ``max_tokens`` tokens. Special tokens (EOS) never belong to a span.
"""

from __future__ import annotations

import os
import unicodedata
import weakref
from functools import lru_cache
from typing import Any, Sequence

from transformers import PreTrainedTokenizerBase

from mgsr_bench.errors import UserError

SPAN_MODES = ("rule", "word", "spacy")

FUNCTION_WORDS = frozenset("""
about above across after against along among around as at before behind below beneath beside between beyond
by despite down during except for from in inside into like near of off on onto out outside over past since
through throughout till to toward towards under underneath until unto up upon via with within without
and but or nor so yet because although though while whereas if unless whether than
who whom whose which that what where when why
am is are was were be been being have has had having do does did shall should will would may might must can
could
""".split())


# tokenizer -> (anchor id, piece per token id); entries go with their tokenizer
_PIECES: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[int, dict[int, str]]]" = weakref.WeakKeyDictionary()


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """The text each token adds after an ordinary preceding token (a byte of a split character reads as U+FFFD)."""
    if tokenizer not in _PIECES:
        _PIECES[tokenizer] = (tokenizer("a", add_special_tokens=False).input_ids[0], {})
    anchor, cache = _PIECES[tokenizer]
    decode = lambda toks: tokenizer.decode(toks, skip_special_tokens=False,  # noqa: E731
                                           clean_up_tokenization_spaces=False)
    prefix = decode([anchor])
    pieces = []
    for t in ids:
        if t not in cache:
            text = decode([anchor, t])
            cache[t] = text[len(prefix):] if text.startswith(prefix) else text[len(os.path.commonprefix([prefix, text])):]
        pieces.append(cache[t])
    return pieces


def _is_punctuation(piece: str) -> bool:
    stripped = piece.strip()
    return bool(stripped) and all(unicodedata.category(c)[0] in "PS" and c != "\ufffd" for c in stripped)


def words(pieces: Sequence[str], special: Sequence[bool]) -> list[tuple[list[int], str, bool]]:
    """``(token indices, text, is_punctuation)`` per word, in order; whitespace-only and special tokens split words."""
    out: list[tuple[list[int], str, bool]] = []
    current: list[int] | None = None
    for i, (piece, is_special) in enumerate(zip(pieces, special)):
        if is_special or not piece.strip():
            current = None
            continue
        punct = _is_punctuation(piece)
        if punct or current is None or piece[0].isspace() or out[-1][2]:
            current = [i]
            out.append((current, piece, punct))
        else:
            current.append(i)
            out[-1] = (current, out[-1][1] + piece, False)
    return out


def _cut(groups: list[list[int]], max_tokens: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` spans of 2..max_tokens tokens from token groups."""
    spans = []
    for group in groups:
        for k in range(0, len(group), max_tokens):
            piece = group[k: k + max_tokens]
            if len(piece) >= 2:
                spans.append((piece[0], piece[-1] + 1))
    return spans


def _phrases(word_list: list[tuple[list[int], str, bool]]) -> list[list[int]]:
    phrases: list[list[int]] = []
    current: list[int] = []
    for tokens, text, punct in word_list:
        if punct or text.strip().lower() in FUNCTION_WORDS or (current and tokens[0] != current[-1] + 1):
            if current:
                phrases.append(current)
            current = []
        if not punct:
            current = current + tokens
    if current:
        phrases.append(current)
    return phrases


@lru_cache(maxsize=4)
def spacy_pipeline(model: str) -> Any:
    """spaCy's pipeline for ``model``, loaded once; one clear error when spaCy or the model is missing."""
    try:
        import spacy
    except ImportError:
        raise UserError("span extractor 'spacy' needs spaCy: pip install -e '.[spacy]' in the clone and "
                        f"python -m spacy download {model}; or use spans: rule") from None
    try:
        return spacy.load(model, disable=["ner", "lemmatizer"])
    except OSError:
        raise UserError(f"spaCy model {model!r} is not installed: python -m spacy download {model}; "
                        "or use spans: rule") from None


def _spacy_groups(pieces: Sequence[str], special: Sequence[bool], model: str) -> list[list[int]]:
    """Token groups covered by spaCy's noun chunks and verb groups (runs of AUX/VERB/PART)."""
    nlp = spacy_pipeline(model)
    starts, text = [], ""
    for piece in pieces:
        starts.append(len(text))
        text += piece
    doc = nlp(text)
    char_spans = [(c.start_char, c.end_char) for c in doc.noun_chunks]
    run: list[Any] = []
    for tok in list(doc) + [None]:
        if tok is not None and tok.pos_ in ("AUX", "VERB", "PART"):
            run.append(tok)
            continue
        if run:
            char_spans.append((run[0].idx, run[-1].idx + len(run[-1].text)))
        run = []
    groups = []
    for begin, end in sorted(char_spans):
        group = [i for i, (s, piece) in enumerate(zip(starts, pieces))
                 if not special[i] and piece.strip() and s < end and s + len(piece) > begin]
        groups.append(group)
    return groups


def extract_spans(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], mode: str = "rule", max_tokens: int = 8,
                  spacy_model: str = "en_core_web_sm") -> list[tuple[int, int]]:
    """Token spans ``(start, stop)`` (stop exclusive) of a response, per ``mode``."""
    if mode not in SPAN_MODES:
        raise ValueError(f"span mode must be one of {', '.join(SPAN_MODES)}, got {mode!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    special_ids = set(tokenizer.all_special_ids)
    special = [i in special_ids for i in ids]
    pieces = token_pieces(tokenizer, ids)
    if mode == "spacy":
        return _cut(_spacy_groups(pieces, special, spacy_model), max_tokens)
    word_list = words(pieces, special)
    if mode == "word":
        return _cut([tokens for tokens, _, punct in word_list if not punct], max_tokens)
    return _cut(_phrases(word_list), max_tokens)


def span_links(n_tokens: int, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: does it form a pair with the next token inside one span."""
    links = [False] * n_tokens
    for start, stop in spans:
        for i in range(start, stop - 1):
            links[i] = True
    return links
