"""round_to: auto: kept channels follow the multiple this CPU's kernels want, resolved once."""
from __future__ import annotations

import pytest

from core import kernels
from core.errors import PrunelabError
from core.prune.plan import AUTO, Plan
from core.prune.resolved import resolve_names


@pytest.mark.parametrize("features, multiple", [({"sse4_2", "avx2", "avx512f"}, 16), ({"avx2"}, 8),
                                                ({"asimd", "fp"}, 4), ({"sse2"}, 1)])
def test_the_multiple_follows_the_cpus_vector_extensions(monkeypatch, features, multiple):
    monkeypatch.setattr(kernels, "cpu_features", lambda: frozenset(features))
    assert kernels.channel_multiple()[0] == multiple


def test_small_groups_round_to_smaller_multiples():
    assert [kernels.group_multiple(8, channels) for channels in (128, 16, 15, 8, 4, 3)] == [8, 8, 4, 4, 2, 1]
    assert [kernels.group_multiple(16, channels) for channels in (128, 32, 31, 16, 15)] == [16, 16, 8, 8, 4]


def test_auto_is_the_default_and_resolves_once_to_this_cpus_multiple():
    plan = Plan(granularity="channel", sparsity=0.3)
    assert plan.round_to == AUTO
    resolved = resolve_names(plan, ["a", "b"], "b")
    multiple, reason = kernels.channel_multiple()
    assert resolved.round_to == multiple and resolved.rounding_reason == reason
    assert resolved.to_dict()["round_to"] == multiple  # what was applied, written into plan.yaml
    assert f"multiples of {multiple}" in resolved.rounding_note
    # a 128-channel group rounds to the CPU's multiple, a 16-channel one keeps removing channels
    assert resolved.kept_channels(128, 0.3) % multiple == 0
    assert resolved.kept_channels(16, 0.3) < 16
    explicit = resolve_names(plan.replace(round_to=16), ["a", "b"], "b")
    assert explicit.round_to == 16 and explicit.kept_channels(16, 0.3) == 16  # the plan's own number holds
    assert resolve_names(Plan(), ["a"], None).round_to == 1  # weights plans do not round channels


def test_round_to_reads_back_and_refuses_other_words(tmp_path):
    assert Plan.load(Plan(granularity="channel").save(tmp_path / "plan.yaml")).round_to == AUTO
    with pytest.raises(PrunelabError, match="round_to must be an integer or 'auto'"):
        Plan(round_to="eight")
