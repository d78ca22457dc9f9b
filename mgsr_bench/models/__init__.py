"""Model and tokenizer loading, and the checks a teacher/student pair must pass."""

from mgsr_bench.models.loading import (check_same_vocabulary, check_vocabulary_fits, count_parameters, load_model,
                                      load_tokenizer, on_compute_device, weights_digest)

__all__ = ["check_same_vocabulary", "check_vocabulary_fits", "count_parameters", "load_model", "load_tokenizer",
           "on_compute_device", "weights_digest"]
