"""A perplexity goal for language models: a largest perplexity rise (lower is better) drives allocation,
on the small factory Llama scored on token ids."""
import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("transformers")

from core.api import allocate, rise_in_points, sensitivity  # noqa: E402
from core.cli.allocate import rise_value  # noqa: E402
from core.data import Dataset  # noqa: E402
from core.errors import PrunelabError  # noqa: E402
from core.search.curves import curves_for, predicted_drop  # noqa: E402
from core.sources import load_model  # noqa: E402
from tests.conftest import ROOT, wait_until  # noqa: E402

LLAMA = f"{ROOT / 'tests' / 'fixtures' / 'causal_lms.py'}:llama"
LEVELS = [0.0, 0.3, 0.6, 0.9]


def _token_ids(windows: int = 24, context: int = 16) -> np.ndarray:
    return (np.arange(windows * context) * 7 % 96).reshape(windows, context)  # 96: the factory's vocabulary


@pytest.fixture(scope="module")
def llama():
    """The factory Llama as loaded: no tokenizer and no data, so random token ids."""
    return load_model(LLAMA, input_shape="1,16")


@pytest.fixture(scope="module")
def swept_llama(llama):
    """The factory Llama on token ids (text, so it has a perplexity) and its sensitivity sweep."""
    handle = llama
    ids = _token_ids()
    handle = dataclasses.replace(handle, data=Dataset("ids", ids[:8], None, ids[8:16], None, x_train=ids[16:]),
                                 _digest=None)
    return handle, sensitivity(handle, levels=LEVELS)


def _with_rises(result: dict, rise_per_sparsity: dict[str, float]) -> dict:
    """The sweep with each named layer's loss set so its perplexity rises by that much per unit of sparsity."""
    dense = result["baseline_perplexity"]
    layers = []
    for layer in result["layers"]:
        slope = rise_per_sparsity.get(layer["name"], 0.0)
        curve = [{**point, "loss": math.log(dense + slope * point["sparsity"])} for point in layer["curve"]]
        layers.append({**layer, "curve": curve})
    return {**result, "layers": layers}


def test_a_sweep_on_text_states_the_dense_perplexity(swept_llama):
    _, result = swept_llama
    assert result["baseline_perplexity"] == pytest.approx(math.exp(result["baseline_loss"]))
    assert rise_in_points(result, "perplexity", 10.0) == pytest.approx(0.1 * result["baseline_perplexity"])


def test_a_perplexity_rise_spares_the_layer_whose_perplexity_rises_fastest(swept_llama):
    handle, result = swept_llama
    size = {layer["name"]: layer["params"] for layer in result["layers"]}
    steep, *gentle = sorted(size, key=size.get, reverse=True)
    per_weight = 1.0 / max(size.values())  # every gentle layer costs the same rise per weight removed
    shaped = _with_rises(result, {steep: 40.0, **{name: size[name] * per_weight for name in gentle}})
    plan = allocate(handle, quality="perplexity", max_accuracy_drop=2.0, sensitivity=shaped)
    chosen = dict(plan.layers)
    assert chosen.get(steep, 0.0) < np.mean([chosen.get(name, 0.0) for name in gentle])
    curves = curves_for(shaped, "weights", (0.0, 0.9), "perplexity")
    assert 0.0 < predicted_drop(curves, chosen) <= 2.0 + 1e-6  # a rise, in perplexity points, within the goal
    wider = dict(allocate(handle, quality="perplexity", max_accuracy_drop=8.0, sensitivity=shaped).layers)
    assert sum(wider.values()) > sum(chosen.values())  # a larger accepted rise buys more sparsity


def test_a_sparsity_target_past_the_accepted_rise_is_refused(swept_llama):
    handle, result = swept_llama
    shaped = _with_rises(result, {layer["name"]: 10.0 for layer in result["layers"]})
    with pytest.raises(PrunelabError, match="of perplexity"):
        allocate(handle, target_sparsity=0.8, quality="perplexity", max_accuracy_drop=1.0, sensitivity=shaped)


def test_random_token_ids_have_no_perplexity_goal(llama):
    handle = llama
    assert handle.data.synthetic
    result = sensitivity(handle, levels=[0.0, 0.5], max_items=4)
    assert result["baseline_perplexity"] is None
    with pytest.raises(PrunelabError, match="no perplexity"):
        allocate(handle, quality="perplexity", max_accuracy_drop=1.0, sensitivity=result)


@pytest.mark.parametrize("text, expected", [("5", (5.0, False)), ("2.5%", (2.5, True)), ("0", (0.0, False))])
def test_a_perplexity_rise_reads_points_or_percent(text, expected):
    assert rise_value(text) == expected


@pytest.mark.parametrize("text", ["-1", "five", "%", "nan"])
def test_a_bad_perplexity_rise_is_one_line(text):
    with pytest.raises(PrunelabError, match="--max-perplexity-rise"):
        rise_value(text)


def test_tune_offers_a_language_model_on_text_a_perplexity_goal(open_app, tmp_path):
    ids = tmp_path / "ids.npz"
    np.savez(ids, x=_token_ids())
    app = open_app(LLAMA, page="tune", env={"PRUNELAB_INPUT_SHAPE": "1,16", "PRUNELAB_DATA": str(ids)})
    goal = next(box for box in app.selectbox if box.label == "Goal")
    assert goal.value == "perplexity" and goal.options[:2] == ["Perplexity rise at most",
                                                               "Perplexity rise at most (%)"]
    assert "largest rise in perplexity (points)" in [box.label for box in app.number_input]


def test_sensitivity_text_table_reads_perplexity_rises_with_agreement_beside(swept_llama, capsys):
    from core.cli.sensitivity import print_table

    _, result = swept_llama
    print_table(result)
    out = capsys.readouterr().out
    assert f"baseline perplexity {result['baseline_perplexity']:.4g}" in out
    assert "rise in perplexity when only that layer is pruned" in out and "drop in" not in out
    first = result["layers"][0]
    rises = out.split(first["name"], 1)[1].splitlines()[0].split()
    worst = math.exp(first["curve"][-1]["loss"]) - result["baseline_perplexity"]
    assert rises[-1].startswith(f"{worst:.1f}")  # the rise at the last level, in perplexity
    assert "  agreement %" in out


def _sweep_on_the_page(app):
    """Press Run sweep (quick) and rerun the page until the sweep's result is shown (the fragment polls)."""
    next(toggle for toggle in app.toggle if toggle.label.startswith("Quick")).set_value(True)
    next(button for button in app.button if button.label == "Run sweep").click()

    def shown() -> bool:  # the sweep runs in a background thread; the page shows it when it ends
        app.run()
        return any("baseline" in caption.value for caption in app.caption)

    wait_until(shown, 60, "the sweep's result on the Sensitivity page", poll=0.25)
    return app


def test_the_sensitivity_page_shows_a_language_model_on_text_by_its_perplexity(open_app, tmp_path):
    ids = tmp_path / "ids.npz"
    np.savez(ids, x=_token_ids())
    app = open_app(LLAMA, page="sensitivity", env={"PRUNELAB_INPUT_SHAPE": "1,16", "PRUNELAB_DATA": str(ids)})
    _sweep_on_the_page(app)
    assert not app.exception and not app.error
    caption = next(caption.value for caption in app.caption if "baseline" in caption.value)
    assert "baseline perplexity" in caption and "(agreement 100.00%)" in caption
    heatmap = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    assert heatmap["colorbar"]["title"]["text"] == "perplexity rise" and heatmap["zmin"] == 0
    assert max(value for row in heatmap["z"] for value in row if value is not None) > 0  # a rise reads positive
    blocks = app.dataframe[-1].value
    assert {"perplexity without it", "rise", "agreement without it (%)"} <= set(blocks.columns)
    assert (blocks["rise"] > 0).any()
