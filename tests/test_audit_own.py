"""`auditgame audit MODEL --spec SPEC.yaml --arch module:Class | --hf`: a model from outside a zoo.

The happy paths audit the tiny zoo's organisms as if a user had brought their weights, and
the worked example in examples/own_model. Every bad input stops with one message, exit code
2, no traceback and no output file.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from auditgame.access import Budget
from auditgame.auditors.base import FittedAuditor, Verdict
from auditgame.cli import app
from auditgame.image.families.digits import Digits, SmallCNN
from auditgame.organism import WEIGHTS
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.user.model import LoadedModel
from auditgame.user.spec import CleanDataFile, ImageClassification, json_schema, load_spec

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model"
SMALL_CNN = "auditgame.image.families.digits:SmallCNN"
LABELS = [str(d) for d in range(10)]
UNCALIBRATED = [{"name": "neural_cleanse", "params": {"calibrate": False}}]


def spec_dict(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": "image_classification",
        "behaviour": "classify the handwritten digit",
        "input_shape": [1, 8, 8],
        "labels": LABELS,
        "threat_model": {"kind": "mask_pattern", "max_mask_l1": 20},
        "clean_data": {"family": "digits"},
    }
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def write_spec(folder: Path, **changes: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**changes)))
    return path


def random_weights(folder: Path, name: str = "model.safetensors", **kwargs: Any) -> Path:
    torch.manual_seed(0)
    state = SmallCNN(**kwargs).state_dict()
    path = folder / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def audit(*args: str | Path) -> Any:
    return runner.invoke(app, ["audit", *map(str, args)])


def fails(tmp_path: Path, *args: str | Path) -> str:
    """Run ``audit ARGS --out tmp/finding.json``; assert one clean failure; return the text."""
    out = tmp_path / "finding.json"
    result = audit(*args, "--out", out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and result.output.startswith("error:")
    assert not out.exists()
    return " ".join(result.output.split())


# --- happy paths ------------------------------------------------------------------------------


@pytest.mark.kernels
def test_flags_the_badnets_organism_with_its_target(tiny_zoo, tmp_path: Path) -> None:
    bad = tiny_zoo.by_role("badnets")[0]
    weights = tiny_zoo.zoo.organism_path(bad) / WEIGHTS
    spec = write_spec(tmp_path, auditors=UNCALIBRATED)
    out = tmp_path / "finding.json"
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report == json.loads(result.stdout)
    assert report["card"]["family"] == "user" and report["card"]["classes"] == LABELS
    assert report["card"]["weights_sha256"] == tiny_zoo.zoo.organism(bad).card.weights_sha256
    (finding,) = report["findings"]
    assert finding["error"] is None
    assert finding["p_violation"] >= 0.5
    assert finding["target"] == tiny_zoo.secret(bad).target
    witness = finding["witness"]
    assert witness["checked"] and witness["in_threat_model"] and witness["violates"]
    assert witness["n_heldout"] == len(Digits().data().test)
    assert "FLAGGED" in result.output and "violates the spec" in result.output


@pytest.mark.kernels
def test_does_not_flag_a_clean_organism_audited_on_samples_from_a_file(
    tiny_zoo, tmp_path: Path
) -> None:
    clean = tiny_zoo.by_role("clean")[0]
    weights = tiny_zoo.zoo.organism_path(clean) / WEIGHTS
    splits = Digits().data()
    np.savez(
        tmp_path / "clean.npz",
        x=torch.cat([splits.val.x, splits.test.x]).numpy(),
        y=torch.cat([splits.val.y, splits.test.y]).numpy(),
    )
    spec = write_spec(tmp_path, clean_data={"path": "clean.npz"}, auditors=UNCALIBRATED)
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    n = len(splits.val) + len(splits.test)
    assert report["clean_data"] == {
        "source": f"{tmp_path / 'clean.npz'}: 100 samples for the auditor, {n - 100} held out",
        "n_audit": 100,
        "n_heldout": n - 100,
    }
    (finding,) = report["findings"]
    assert finding["error"] is None and finding["p_violation"] < 0.5
    assert finding["witness"]["checked"] and finding["witness"]["n_heldout"] == n - 100
    assert "not flagged" in result.output


@pytest.mark.kernels
def test_the_worked_example_finds_its_planted_square(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from train_tiny_net import TARGET, train

    train(tmp_path, backdoor=True)
    shutil.copy(EXAMPLE / "spec.yaml", tmp_path)
    result = audit(
        tmp_path / "model.safetensors",
        "--spec",
        tmp_path / "spec.yaml",
        "--arch",
        "tiny_net:TinyNet",
    )
    assert result.exit_code == 0, result.output
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["params"]["calibrate"] is False
    assert finding["p_violation"] >= 0.5 and finding["target"] == TARGET
    assert finding["witness"]["violates"]


def test_a_weights_only_auditor_needs_no_clean_data_and_no_witness_is_checked(
    tmp_path: Path,
) -> None:
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, clean_data=None)
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--auditor", "weight_stats")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["clean_data"]["source"] == "none given"
    (finding,) = report["findings"]
    assert finding["auditor"] == "weight_stats" and not finding["witness"]["checked"]
    assert "witness not checked: the auditor named no trigger" in " ".join(result.output.split())


def test_the_spec_names_the_feature_layer_and_a_wrong_name_stops_before_any_audit(
    tmp_path: Path,
) -> None:
    """``feature_layer`` names the module the activation auditors read (ABS, the dynamic
    baselines); without it the model's ``features``; a name the model lacks is a spec error."""
    from auditgame.user.audit import feature_layer
    from auditgame.user.spec import load_spec

    model = SmallCNN()
    named = write_spec(tmp_path, feature_layer="features.3")
    assert feature_layer(model, load_spec(named), named) is model.features[3]
    default = write_spec(tmp_path)
    assert feature_layer(model, load_spec(default), default) is model.features
    weights = random_weights(tmp_path)
    wrong = write_spec(tmp_path, feature_layer="backbone.layer4")
    message = fails(tmp_path, weights, "--spec", wrong, "--arch", SMALL_CNN, "--auditor", "abs")
    assert "feature_layer 'backbone.layer4' is not a module of the model" in message
    assert "features.0" in message


def test_a_failing_auditor_gives_no_probability_and_a_nonzero_exit(tmp_path: Path) -> None:
    """ABS told to stimulate the linear head (no activation inside) fails: the finding carries
    the error and p_violation null, never the 0.5 that the flag rule would count as flagged,
    and the command exits 3."""
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, feature_layer="head")
    out = tmp_path / "finding.json"
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--auditor", "abs", "--out", out)
    assert result.exit_code == 3, result.output
    (finding,) = json.loads(out.read_text())["findings"]
    assert finding["p_violation"] is None and "no activation module" in finding["error"]
    assert "abs: failed" in result.output and "FLAGGED" not in result.output


@pytest.mark.kernels
def test_a_calibrated_auditor_without_fit_family_runs_its_rule_without_a_fit(
    tmp_path: Path,
) -> None:
    """``--auditor neural_cleanse`` with its defaults (calibrated) on a model of no family: it
    runs the paper's rule, and says so and how to calibrate it."""
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path)
    args = ["--spec", spec, "--arch", SMALL_CNN, "--auditor", "neural_cleanse"]
    result = audit(weights, *args, "--param", "steps=20")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (finding,) = report["findings"]
    assert finding["error"] is None and finding["params"]["calibrate"] is False
    (note,) = report["notes"]
    assert "no fit_family in the spec, so its rule without a fit (calibrate=false)" in note
    assert "fit_family: NAME" in " ".join(result.output.split())


@auditor("counting_fit")
class CountingFit(FittedAuditor):
    """Fits by counting its fits: what a shadow zoo costs, without one."""

    fits: ClassVar[int] = 0

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        CountingFit.fits += 1
        return {"fits": torch.tensor([CountingFit.fits])}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=0.1, evidence={"fit": int(self.require_fitted()["fits"])})


def test_fits_are_cached_per_user_and_shared_across_working_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audits run from two folders fit once, into the per-user cache."""
    monkeypatch.setenv("AUDITGAME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(CountingFit, "fits", 0)
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, fit_family="digits")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--auditor", "counting_fit")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["findings"][0]["evidence"] == {"fit": 1}
    assert CountingFit.fits == 1
    assert (
        len(list((tmp_path / "cache" / "fits" / "digits").glob("counting_fit-*.safetensors"))) == 1
    )
    assert not (tmp_path / "a" / "auditgame-data").exists()


@pytest.mark.kernels
def test_a_classifier_whose_encoder_is_not_called_features_runs_the_image_auditors(
    tmp_path: Path,
) -> None:
    """Issue 18's case: a user's classifier with its own layer names, default flags, the
    spec naming its feature layer: Neural Cleanse (its rule without a fit, said in a note),
    K-Arm, ABS and dormant_units (on the activations inside ``encoder``) all answer, none
    fails."""
    from own_models import EncoderNet

    torch.manual_seed(0)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in EncoderNet().state_dict().items()}, str(weights))
    spec = write_spec(
        tmp_path,
        feature_layer="encoder",
        auditors=["neural_cleanse", "k_arm", "abs", "dormant_units"],
    )
    result = audit(weights, "--spec", spec, "--arch", "own_models:EncoderNet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    findings = {f["auditor"]: f for f in report["findings"]}
    assert set(findings) == {"neural_cleanse", "k_arm", "abs", "dormant_units"}
    assert all(f["error"] is None and f["p_violation"] is not None for f in findings.values())
    assert findings["abs"]["evidence"]["layers"] == ["encoder.1", "encoder.5"]
    dormant = findings["dormant_units"]["evidence"]["layers"]
    assert [layer["layer"] for layer in dormant] == ["encoder.1", "encoder.5"]
    assert any("neural_cleanse: no fit_family" in note for note in report["notes"])


def test_says_when_no_held_out_samples_are_left_for_the_witness(tmp_path: Path) -> None:
    weights = random_weights(tmp_path)
    data = Digits().data().val
    save_file({"x": data.x[:1].contiguous(), "y": data.y[:1]}, str(tmp_path / "one.safetensors"))
    spec = write_spec(tmp_path, clean_data={"path": "one.safetensors"}, auditors=UNCALIBRATED)
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--param", "steps=3")
    assert result.exit_code == 0, result.output
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["params"]["steps"] == 3
    assert finding["witness"]["checked"] is False
    assert "no held-out clean samples" in finding["witness"]["note"]
    assert "witness not checked: no held-out clean samples" in " ".join(result.output.split())


# --- the spec file ----------------------------------------------------------------------------


def test_committed_schema_is_the_generated_one() -> None:
    committed = json.loads((ROOT / "docs" / "spec.schema.json").read_text())
    assert committed == json_schema(), (
        'docs/spec.schema.json is stale: python -c "import auditgame.user.spec as u; '
        "u.write_json_schema('docs/spec.schema.json')\""
    )


def test_the_example_spec_validates_and_reads_clean_data_beside_itself() -> None:
    spec = load_spec(EXAMPLE / "spec.yaml")
    assert isinstance(spec, ImageClassification)
    assert spec.clean_data == CleanDataFile(path=EXAMPLE / "clean.safetensors")
    assert spec.architecture.kwargs == {"width": 12}
    assert spec.spec.threat_model.kind == "mask_pattern" and spec.spec.tau == 0.5


def test_auditors_are_names_or_name_and_params(tmp_path: Path) -> None:
    path = write_spec(tmp_path, auditors=["weight_stats", {"name": "x", "params": {"a": 1}}])
    spec = load_spec(path)
    assert [(c.name, c.params) for c in spec.auditor_choices()] == [
        ("weight_stats", {}),
        ("x", {"a": 1}),
    ]
    default = load_spec(write_spec(tmp_path))
    assert [(c.name, c.params) for c in default.auditor_choices()] == [
        ("neural_cleanse", {"calibrate": False})
    ]


# Nine levels of nine-fold aliases: 9**9 strings once expanded (the "billion laughs").
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (yaml.safe_dump(spec_dict(tau=2)), "tau: Input should be less than or equal to 1"),
        (
            yaml.safe_dump(spec_dict(threat_model={"kind": "mask_pattern"})),
            "threat_model.max_mask_l1: Field required",
        ),
        (yaml.safe_dump(spec_dict(tua=0.3)), "tua: Extra inputs are not permitted"),
        (
            yaml.safe_dump(spec_dict(threat_model={"kind": "mask_pattern", "max_mask_l1": 1e999})),
            "max_mask_l1: Input should be a finite number",
        ),
        (yaml.safe_dump(spec_dict(input_shape=[8, 8])), "input_shape: List should have at least 3"),
        (yaml.safe_dump(spec_dict(labels=["a", "a"])), "labels must be distinct"),
        (
            yaml.safe_dump(spec_dict(threat_model={"kind": "token_pattern", "vocab": 9, "k": 3})),
            "additive_l2 or mask_pattern or source_mask_pattern, not token_pattern",
        ),
        (yaml.safe_dump(spec_dict(task="regression")), "does not match any of the expected tags"),
        (yaml.safe_dump(spec_dict(task=None)), "task: missing"),
        ("task: [image", "not valid YAML"),
        ("- a list\n", "a spec file is a YAML mapping"),
        # Hostile files: refused at once, in one short line.
        (LAUGHS + yaml.safe_dump(spec_dict()), "aliases (*name) are not allowed"),
        ("task: " + "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
        ("task: " + "[" * 100_000, "nested deeper than 32 levels"),
        ("behaviour: " + "x" * (1 << 20), "at most 1 MiB"),
    ],
)
def test_a_spec_that_does_not_validate_names_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    weights = random_weights(tmp_path)
    (tmp_path / "spec.yaml").write_text(text)
    message = fails(tmp_path, weights, "--spec", tmp_path / "spec.yaml", "--arch", SMALL_CNN)
    assert f"{tmp_path / 'spec.yaml'}:" in message and expected in message
    assert len(message) < 600, message[:600]


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("something tried to unpickle a model file")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.usefixtures("no_unpickling")
@pytest.mark.parametrize("kind", ["pt", "zip_named_safetensors", "pickle_named_safetensors"])
def test_pickle_weights_are_refused_unopened(tmp_path: Path, kind: str) -> None:
    state = SmallCNN().state_dict()
    if kind == "pt":
        path = tmp_path / "model.pt"
        torch.save(state, path)
    elif kind == "zip_named_safetensors":
        path = tmp_path / "model.safetensors"
        torch.save(state, path)
    else:
        path = tmp_path / "model.safetensors"
        path.write_bytes(pickle.dumps({k: v.numpy() for k, v in state.items()}, protocol=4))
    message = fails(tmp_path, path, "--spec", write_spec(tmp_path), "--arch", SMALL_CNN)
    assert "looks like a pickle" in message and "safetensors.torch.save_file" in message


def test_weights_of_the_wrong_shape_are_listed(tmp_path: Path) -> None:
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, architecture={"kwargs": {"width": 8}})
    message = fails(tmp_path, weights, "--spec", spec, "--arch", SMALL_CNN)
    assert "weights do not fit" in message and "wrong shapes" in message
    assert "features.0.weight: file [16, 1, 3, 3] vs model [8, 1, 3, 3]" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in SmallCNN().state_dict().items()}
    state["fc.weight"] = state.pop("head.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    message = fails(
        tmp_path,
        tmp_path / "model.safetensors",
        "--spec",
        write_spec(tmp_path),
        "--arch",
        SMALL_CNN,
    )
    assert "1 missing keys (head.weight)" in message and "1 unexpected keys (fc.weight)" in message


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in SmallCNN().state_dict().items()}
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "model.safetensors"))
    message = fails(
        tmp_path,
        tmp_path / "model.safetensors",
        "--spec",
        write_spec(tmp_path),
        "--arch",
        SMALL_CNN,
    )
    assert "'head.weight' holds NaN or infinite values" in message


def test_a_truncated_safetensors_file_is_refused(tmp_path: Path) -> None:
    weights = random_weights(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-10])
    message = fails(tmp_path, weights, "--spec", write_spec(tmp_path), "--arch", SMALL_CNN)
    assert "truncated" in message


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("model", "model.safetensors: model file is missing"),
        ("spec", "spec.yaml: spec file is missing"),
        ("clean", "clean.safetensors: file is missing"),
    ],
)
def test_missing_files_are_named(tmp_path: Path, missing: str, expected: str) -> None:
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, clean_data={"path": "clean.safetensors"}, auditors=UNCALIBRATED)
    {"model": weights, "spec": spec}.get(missing, tmp_path / "none").unlink(missing_ok=True)
    message = fails(tmp_path, weights, "--spec", spec, "--arch", SMALL_CNN)
    assert expected in message


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("no_such_module_here:Net", "cannot import 'no_such_module_here'"),
        ("auditgame.image.families.digits:Nope", "has no 'Nope' (its nn.Module classes: SmallCNN)"),
        (
            "auditgame.image.families.digits:train_classifier",
            "is a function, not an nn.Module class",
        ),
        ("SmallCNN", "takes MODULE:CLASS"),
    ],
)
def test_an_arch_that_is_not_an_importable_module_class(
    tmp_path: Path, arch: str, expected: str
) -> None:
    weights = random_weights(tmp_path)
    message = fails(tmp_path, weights, "--spec", write_spec(tmp_path), "--arch", arch)
    assert expected in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"architecture": {"kwargs": {"bogus": 1}}}, "unexpected keyword argument 'bogus'"),
        ({"labels": LABELS[:5]}, "returns [2, 10] for inputs of shape [2, 1, 8, 8], not [2, 5]"),
        ({"input_shape": [3, 8, 8]}, "fails on inputs of shape [2, 3, 8, 8]"),
    ],
)
def test_a_model_that_does_not_match_the_spec(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    weights = random_weights(tmp_path)
    message = fails(
        tmp_path, weights, "--spec", write_spec(tmp_path, **changes), "--arch", SMALL_CNN
    )
    assert expected in message


def clean_file(folder: Path, name: str, **arrays: Any) -> None:
    if name.endswith(".npz"):
        np.savez(folder / name, **arrays)
    else:
        save_file(
            {k: torch.as_tensor(v).contiguous() for k, v in arrays.items()}, str(folder / name)
        )


GOOD_X = np.full((4, 1, 8, 8), 0.5, np.float32)
GOOD_Y = np.arange(4)


@pytest.mark.parametrize(
    ("name", "arrays", "expected"),
    [
        ("c.safetensors", {"x": GOOD_X}, "needs tensors named x and y, found x"),
        ("c.safetensors", {"x": GOOD_X[:, :, :4], "y": GOOD_Y}, "x has shape [4, 1, 4, 8]"),
        ("c.npz", {"x": GOOD_X, "y": GOOD_Y + 7}, "labels run from 7 to 10"),
        ("c.npz", {"x": GOOD_X * 255, "y": GOOD_Y}, "x must be finite and in [0, 1]"),
        ("c.npz", {"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "y must hold integer labels"),
        ("c.npz", {"x": GOOD_X, "y": np.array([None] * 4)}, "not a readable .npz"),
        ("c.csv", {}, "give a .safetensors (preferred) or .npz file"),
    ],
)
def test_clean_samples_that_do_not_fit_the_spec(
    tmp_path: Path, name: str, arrays: dict[str, Any], expected: str
) -> None:
    weights = random_weights(tmp_path)
    if arrays:
        clean_file(tmp_path, name, **arrays)
    else:
        (tmp_path / name).write_text("x,y\n")
    spec = write_spec(tmp_path, clean_data={"path": name}, auditors=UNCALIBRATED)
    message = fails(tmp_path, weights, "--spec", spec, "--arch", SMALL_CNN)
    assert f"clean_data.path {tmp_path / name}" in message and expected in message


def test_clean_data_of_a_family_with_another_task(tmp_path: Path) -> None:
    weights = random_weights(tmp_path, n_classes=5)
    spec = write_spec(
        tmp_path,
        labels=LABELS[:5],
        architecture={"kwargs": {"n_classes": 5}},
        auditors=UNCALIBRATED,
    )
    message = fails(tmp_path, weights, "--spec", spec, "--arch", SMALL_CNN)
    assert "clean_data.family: digits has image inputs of shape [1, 8, 8] and 10 labels" in message


@pytest.mark.parametrize(
    ("args", "changes", "expected"),
    [
        (["--auditor", "mahalanobis"], {}, "needs run-time traffic"),
        (["--auditor", "token_search"], {}, "examines tokens models, not image classifiers"),
        (["--auditor", "nope"], {}, "unknown auditor 'nope'"),
        (["--param", "bogus=1"], {"auditors": UNCALIBRATED}, "bad parameters"),
        (["--auditor", "neural_cleanse", "--param", "calibrate=true"], {}, "fit_family: NAME"),
        (["--auditor", "mntd"], {}, "fit_family: NAME in the spec"),
        (["--auditor", "neural_cleanse"], {"fit_family": "nope"}, "fit_family: unknown family"),
        ([], {"clean_data": None}, "neural_cleanse needs clean samples"),
    ],
)
def test_auditors_that_cannot_audit_this_model(
    tmp_path: Path, args: list[str], changes: dict[str, Any], expected: str
) -> None:
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path, **changes)
    message = fails(tmp_path, weights, "--spec", spec, "--arch", SMALL_CNN, *args)
    assert expected in message


def test_flags_that_do_not_go_together(tmp_path: Path) -> None:
    weights = random_weights(tmp_path)
    spec = write_spec(tmp_path)
    assert "add --spec SPEC.yaml" in fails(tmp_path, weights)
    assert "add --spec SPEC.yaml" in fails(tmp_path, weights, "--arch", SMALL_CNN)
    assert "needs --arch MODULE:CLASS" in fails(tmp_path, weights, "--spec", spec)
    assert "--hf loads a language model" in fails(tmp_path, tmp_path, "--spec", spec, "--hf")
    result = audit(weights, "--spec", spec, "--arch", SMALL_CNN, "--out", tmp_path / "no" / "f")
    assert result.exit_code == 2 and "does not exist" in result.output


# --- Hugging Face folders ---------------------------------------------------------------------


def lm_spec(folder: Path, **changes: Any) -> Path:
    path = folder / "lm.yaml"
    spec = {
        "task": "language_model",
        "behaviour": "continue text",
        "threat_model": {"kind": "token_pattern", "vocab": 50, "k": 4},
        **changes,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.usefixtures("no_unpickling")
def test_hf_folders_without_safe_weights_are_refused(tmp_path: Path) -> None:
    spec = lm_spec(tmp_path)
    folder = tmp_path / "hf"
    assert "model folder is missing" in fails(tmp_path, folder, "--spec", spec, "--hf")
    folder.mkdir()
    assert "no config.json" in fails(tmp_path, folder, "--spec", spec, "--hf")
    (folder / "config.json").write_text("{}")
    assert "no *.safetensors weights" in fails(tmp_path, folder, "--spec", spec, "--hf")
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    message = fails(tmp_path, folder, "--spec", spec, "--hf")
    assert "holds only pickle weights (pytorch_model.bin)" in message
    assert "safe_serialization=True" in message
    assert "--hf loads a folder" in fails(
        tmp_path, folder, "--spec", spec, "--hf", "--arch", SMALL_CNN
    )
    assert "add --hf" in fails(tmp_path, folder, "--spec", spec, "--arch", SMALL_CNN)


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is not None, reason="transformers is installed"
)
def test_hf_without_transformers_says_how_to_install_it(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    message = fails(tmp_path, folder, "--spec", lm_spec(tmp_path), "--hf")
    assert "needs transformers, which is not installed (pip install transformers)" in message


def test_a_language_model_under_a_spec_no_text_auditor_speaks_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = LoadedModel(torch.nn.Linear(2, 2), "0" * 64, {"name": "Fake", "vocab_size": 50})
    monkeypatch.setattr("auditgame.user.audit.load_hf_model", lambda _folder: loaded)
    message = fails(tmp_path, tmp_path, "--spec", lm_spec(tmp_path, vocab_size=51), "--hf")
    assert "vocab_size is 51, but the model's config says 50" in message
    message = fails(tmp_path, tmp_path, "--spec", lm_spec(tmp_path, vocab_size=50), "--hf")
    assert "no installed auditor can audit language models from outside a zoo" in message
    message = fails(
        tmp_path, tmp_path, "--spec", lm_spec(tmp_path, vocab_size=50), "--hf", "--auditor", "gcg"
    )
    assert (
        "gcg looks for text_trigger violations, and the spec's threat is token_pattern" in message
    )
