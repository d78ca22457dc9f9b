"""The one training harness every method shares."""

from mgsr_bench.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
