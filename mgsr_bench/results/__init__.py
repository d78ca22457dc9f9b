"""Run records (one JSON file per run), the results store, and the tables and figures built from them."""

from mgsr_bench.results.leaderboard import build_board, load_records, render_leaderboard
from mgsr_bench.results.record import make_record, read_record, write_record
from mgsr_bench.results.store import ResultsStore

__all__ = ["ResultsStore", "build_board", "load_records", "make_record", "read_record", "render_leaderboard",
           "write_record"]
