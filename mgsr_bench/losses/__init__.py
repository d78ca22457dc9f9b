"""Token-level losses over full-vocabulary distributions; each returns one value per token."""

from mgsr_bench.losses.divergences import cross_entropy, forward_kl

__all__ = ["cross_entropy", "forward_kl"]
