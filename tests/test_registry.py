"""The registry: decorators, lookup errors, and plugins through the entry-point group."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditgame import registry
from auditgame.errors import RegistryError
from auditgame.image.auditors.neural_cleanse import NeuralCleanse


def test_builtins_are_registered() -> None:
    assert {"neural_cleanse", "weight_stats", "mahalanobis"} <= set(registry.names("auditor"))
    assert {"badnets", "blend"} <= set(registry.names("attack"))
    assert "digits" in registry.names("family")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown auditor 'nope'; known: .*neural_cleanse"):
        registry.get("auditor", "nope")


def test_a_name_cannot_be_taken_twice() -> None:
    with pytest.raises(RegistryError, match="already registered"):

        @registry.auditor("neural_cleanse")
        class Impostor:
            pass


def test_only_a_class_can_be_registered() -> None:
    """A helper function written between a decorator and its class would otherwise take the
    class's name (this happened to ``smollm``: the family became a function)."""

    def helper() -> None: ...

    with pytest.raises(RegistryError, match="only a class can be registered"):
        registry.family("no_such_family_as_a_function")(helper)
    assert registry.registered("family", "no_such_family_as_a_function") is None


def test_params_are_data() -> None:
    auditor = NeuralCleanse(steps=7)
    params = auditor.get_params()
    assert params["steps"] == 7
    clone = auditor.clone(lr=0.5)
    assert isinstance(clone, NeuralCleanse)
    assert clone.get_params() == {**params, "lr": 0.5}
    assert repr(auditor).startswith("NeuralCleanse(steps=7,")


def test_plugin_registers_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "probe_plugin.py").write_text(
        "from auditgame.registry import auditor\n"
        "from auditgame.image.auditors.weight_stats import WeightStats\n\n"
        "@auditor('probe_plugin')\n"
        "class Probe(WeightStats):\n"
        "    pass\n"
    )
    dist = tmp_path / "probe_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[auditgame.plugins]\nprobe = probe_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    assert "probe_plugin" in registry.names("auditor")
    assert registry.get("auditor", "probe_plugin").name == "probe_plugin"


def test_a_broken_plugin_says_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[auditgame.plugins]\nbroken = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(RegistryError, match="plugin 'broken'"):
        registry.load_plugins()
