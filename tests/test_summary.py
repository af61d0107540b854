"""The Tune page's Dense -> Pruned strip says what was measured, and the paired runs' verdict."""
from __future__ import annotations

from dashboard.summary import strip_items


def report(pruned_p50: float, speedup: dict) -> dict:
    dense = {"accuracy": 0.99, "latency_ms": {"p50": 0.0324}, "compressed_bytes": 582_000, "onnx_bytes": 630_000,
             "macs": 2_440_000}
    pruned = {**dense, "latency_ms": {"p50": pruned_p50}, "speedup": speedup}
    return {"plan": {"granularity": "unstructured"}, "pruned": pruned, "baseline": dense}


def latency_text(item_report: dict) -> str:
    return next(text for label, text, _ in strip_items(item_report) if label.startswith("Latency"))


def test_within_noise_both_measured_latencies_show_with_the_paired_verdict():
    text = latency_text(report(0.0602, {"p50": 0.98, "low": 0.78, "high": 1.09, "measurable": False}))
    assert "32.4" in text and "60.2" in text and "no measurable change in paired runs" in text


def test_a_measurable_speedup_is_named():
    text = latency_text(report(0.0200, {"p50": 1.6, "low": 1.5, "high": 1.7, "measurable": True}))
    assert "20" in text and "faster in paired runs" in text


def test_the_dense_p50_beside_the_pruned_one_comes_from_the_paired_runs():
    # the one dense measurement (32.4 us) was taken under another load than the paired runs
    text = latency_text(report(0.0200, {"p50": 1.6, "low": 1.5, "high": 1.7, "measurable": True,
                                        "reference_p50": 0.0321}))
    assert "32.1" in text and "32.4" not in text and "faster in paired runs" in text


def test_card_colours_follow_the_numbers_not_the_words():
    from dashboard import summary

    drawn = {}

    class Column:
        def metric(self, label, value, delta, delta_color, **_):
            drawn[label] = delta_color

    summary._card(Column(), "rounds to zero", "1", "-0%", 0.0)
    summary._card(Column(), "smaller", "1", "-37%", -37.0)
    summary._card(Column(), "better", "1", "+1.2 pts", 1.2, lower_is_better=False)
    summary._card(Column(), "reworded", "1", "0% (a new wording)", -3.0)
    assert drawn == {"rounds to zero": "off", "smaller": "inverse", "better": "normal", "reworded": "inverse"}
    item = report(0.0200, {"p50": 1.6, "low": 1.5, "high": 1.7, "measurable": True})
    assert summary.latency_change(item["pruned"]) == -38.0
    noise = report(0.06, {"p50": 0.98, "low": 0.8, "high": 1.1, "measurable": False})
    assert summary.latency_change(noise["pruned"]) == 0
