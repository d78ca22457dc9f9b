"""Where a training batch's responses come from: ground truth, student samples or teacher samples.

One implementation shared by every method, so that methods differ only in their objective.
"""

from mgsr_bench.sampling.decode import Decoded, decode
from mgsr_bench.sampling.sources import BatchSource, SourceSpec

__all__ = ["BatchSource", "Decoded", "SourceSpec", "decode"]
