"""The Export page hands over exactly what the Tune page measured: a real server, the system Chromium,
real downloads opened with onnx, torch.load and torch.export.

Run alone with ``.venv/bin/pytest -q -m browser tests/test_browser_export.py``.
"""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from core.api import LiveEvaluator, Plan, apply_plan, export_file, load_model
from tests.test_browser import (
    CHROMIUM,
    TIMEOUT_MS,
    VIEWPORT,
    open_tune,
    slider,
    wait_idle,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="the system Chromium (/usr/bin/chromium) is not installed"),
]
CHANNEL_PLAN = Plan(granularity="channel", sparsity=0.5, round_to=8)
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def switch(page, label: str) -> None:
    page.locator('[data-testid="stCheckbox"]').filter(has_text=label).first.locator("label").click()
    wait_idle(page)


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)


def download(page, label: str) -> tuple[str, bytes]:
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        page.get_by_role("button", name=label).click()
    return info.value.suggested_filename, open(info.value.path(), "rb").read()


def shapes(model_bytes: bytes) -> list[tuple]:
    return sorted(tuple(tensor.dims) for tensor in onnx.load_from_string(model_bytes).graph.initializer)


def set_channel_plan(page) -> None:
    """Tune: channel granularity, kept channels rounded to 8, All layers at 50%."""
    choose(page, "Granularity", "channel")
    choose(page, "Round kept channels", "8")
    handle = slider(page, "All layers")
    handle.wait_for(timeout=TIMEOUT_MS)  # the sliders come after the new plan's metrics: under load past 30 s once
    handle.focus()
    for _ in range(10):  # 5% a step
        handle.press("ArrowRight")
    wait_idle(page)
    page.get_by_text("channel pruning removed whole filters").first.wait_for(timeout=TIMEOUT_MS)


TRUNCATED = """() => [...document.querySelectorAll('[data-testid=stMetricValue], [data-testid=stMetricDelta]')]
  .filter(card => [card, ...card.querySelectorAll('*')].some(part => part.scrollWidth > part.clientWidth + 1))
  .map(card => card.innerText)"""


def test_export_downloads_are_the_measured_channel_plan_then_its_int8_model(browser, server, cnn):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = open_tune(context, server)
    set_channel_plan(page)
    assert page.evaluate(TRUNCATED) == []  # at 1280x800 no metric card cuts its value or unit
    open_page(page, "Export")
    expected = apply_plan(cnn, CHANNEL_PLAN).module.eval()

    name, model_bytes = download(page, "Pruned ONNX")
    assert name.startswith("digits-cnn-channel-") and "-r8" in name and name.endswith(".onnx")
    assert shapes(model_bytes) == shapes(export_file(LiveEvaluator(cnn), "onnx", CHANNEL_PLAN))
    assert (16, 1, 3, 3) in shapes(model_bytes)  # the first convolution keeps 16 of its 32 filters
    assert not {node.op_type for node in onnx.load_from_string(model_bytes).graph.node} & QUANTIZED_OPS

    _, state_bytes = download(page, "State dict")
    state = torch.load(io.BytesIO(state_bytes), weights_only=True)
    assert {key: tuple(value.shape) for key, value in state.items()} == {
        key: tuple(value.shape) for key, value in expected.state_dict().items()}

    _, program_bytes = download(page, "torch.export program")
    program = torch.export.load(io.BytesIO(program_bytes)).module()
    batch = torch.from_numpy(np.ascontiguousarray(cnn.data.x_test[:4]))
    with torch.no_grad():
        assert torch.allclose(program(batch), expected(batch), atol=1e-5)  # a batch of 4, like the CLI's model.pt2

    open_page(page, "Tune")
    switch(page, "Quantize to INT8")
    open_page(page, "Export")
    name, int8_bytes = download(page, "Pruned ONNX")
    assert "-int8" in name
    assert {node.op_type for node in onnx.load_from_string(int8_bytes).graph.node} & QUANTIZED_OPS
    assert len(int8_bytes) < 0.5 * len(model_bytes)
    assert "--quantize int8" in page.locator("[data-testid=stCode]").last.inner_text()
    context.close()


def test_a_digits_resnet_session_downloads_digits_resnet(browser, server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = open_tune(context, server)
    open_page(page, "Model")
    choose(page, "Demo model", "digits-resnet: " + load_model("digits-resnet").description)
    page.get_by_role("button", name="Use this demo").click()
    wait_idle(page)
    page.get_by_text("digits-resnet").first.wait_for(timeout=TIMEOUT_MS)
    open_page(page, "Export")
    name, model_bytes = download(page, "Pruned ONNX")
    resnet = load_model("digits-resnet")
    assert name.startswith("digits-resnet-")
    assert shapes(model_bytes) == shapes(export_file(LiveEvaluator(resnet), "onnx", Plan()))
    context.close()
