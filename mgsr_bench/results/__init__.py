"""Run records (one JSON file per run) and the leaderboard built from them."""

from mgsr_bench.results.leaderboard import leaderboard_frame, load_records, render_leaderboard
from mgsr_bench.results.record import make_record, read_record, write_record

__all__ = ["leaderboard_frame", "load_records", "make_record", "read_record", "render_leaderboard", "write_record"]
