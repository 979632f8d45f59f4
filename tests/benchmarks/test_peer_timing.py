"""The ratio benchmarks' timing helpers: interleaving and the ratio table's arithmetic."""

from benchmarks.peer_timing import ratio_table, time_interleaved


def test_time_interleaved_alternates_candidates_after_warmup():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_ratio_table_reports_ratio_of_medians_and_per_round_ratios():
    times = {"peer": [1.0, 2.0, 4.0], "mine": [0.5, 1.5, 1.0]}
    table = ratio_table(times, reference="peer", target=0.7)
    mine = next(line for line in table.splitlines() if line.startswith("| mine"))
    cells = [c.strip() for c in mine.strip("|").split("|")]
    # Medians 1.0 s / 2.0 s; per-round ratios 0.5, 0.75, 0.25.
    assert cells[1:] == ["1000", "500-1500", "0.500", "0.500 (0.25-0.75)"]
    assert table.splitlines()[-1] == "target ratio <= 0.7"
