"""The report: both files, separate static/dynamic tables, ROC SVG, trigger images, escaping."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from auditgame.finding import Cost, Finding
from auditgame.perturbation import AdditiveTrigger
from auditgame.report import write_report
from auditgame.report.svg import Series, line_svg, png_bytes
from auditgame.score import Score
from auditgame.secret import Secret
from auditgame.store import Store
from auditgame.tokens import TokenPattern
from auditgame.trigger import Trigger

EVIL = "<script>alert(1)</script>"
STATIC = ("neural_cleanse", "weight_stats")
DYNAMIC = "mahalanobis"


def _patch() -> Trigger:
    mask = np.zeros((8, 8))
    mask[5:8, 5:8] = 1.0
    return Trigger(mask=mask, pattern=np.ones((1, 8, 8)))


def _blend() -> Trigger:
    rng = np.random.default_rng(0)
    return Trigger(mask=np.full((8, 8), 0.1), pattern=rng.random((1, 8, 8)))


# (organism id, attack or None, true trigger)
ORGANISMS = [
    ("org-0", "badnets", _patch()),
    ("org-1", "blend", _blend()),
    ("org-2", "badnets", _patch()),
    (f"org-{EVIL}", "blend", _blend()),
    ("org-4", None, None),
    ("org-5", None, None),
    ("org-6", None, None),
]


def _add(store: Store, game: str, auditor: str, dynamic: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i, (org, attack, trig) in enumerate(ORGANISMS):
        bad = attack is not None
        secret = Secret(
            backdoored=bad,
            attack=attack,
            trigger=trig.to_dict() if trig is not None else None,
            target=3 if bad else None,
            clean_accuracy=0.95,
            salt="00",
        )
        p = float(np.clip((0.7 if bad else 0.3) + rng.normal(0, 0.2), 0, 1))
        found = None
        if auditor == "neural_cleanse" and trig is not None:
            found = Trigger(mask=trig.mask * (rng.random((8, 8)) > 0.3), pattern=trig.pattern)
        error = f"crashed: {EVIL}" if (auditor == "weight_stats" and i == 5) else None
        finding = Finding(
            auditor=auditor,
            p_violation=0.5 if error else p,
            target=3 if found is not None else None,
            trigger=found.to_dict() if found is not None else None,
            cost=Cost(seconds=0.25 + i, forward=10, backward=0),
            error=error,
        )
        score = Score(
            organism_id=org,
            auditor=auditor,
            family="digits",
            attack=attack or "clean",
            backdoored=bad,
            dynamic=dynamic,
            p_violation=finding.p_violation,
            flagged=finding.p_violation >= 0.5,
            predicted_target=finding.target,
            true_target=secret.target,
            target_correct=(finding.target == secret.target) if bad else None,
            witness_asr=0.9 if found is not None else None,
            witness_in_threat_model=True if found is not None else None,
            mask_iou=0.6 if found is not None else None,
            seconds=finding.cost.seconds,
            forward=10,
            backward=0,
            error=error,
        )
        store.add(game, score, finding, secret, seed=seed)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Two games of 3 auditors x 7 organisms, built once; the tests only read it."""
    s = Store(tmp_path_factory.mktemp("store") / "results.sqlite")
    s.add_game("g-old", {"zoo": "digits-7", "note": "first"})
    s.add_game("g-new", {"zoo": "digits-7", "note": EVIL})
    for seed, game in enumerate(("g-old", "g-new")):
        for auditor in STATIC:
            _add(s, game, auditor, dynamic=False, seed=seed)
        _add(s, game, DYNAMIC, dynamic=True, seed=seed)
    yield s
    s.close()


def _section(html: str, title: str) -> str:
    """The HTML between heading ``title`` and the next ``<h3>``."""
    start = html.index(f"<h3>{title}</h3>")
    end = html.find("<h3>", start + 1)
    return html[start:end]


def test_report_contents(store: Store, tmp_path: Path) -> None:
    md_path, html_path = write_report(store, tmp_path / "out" / "nested", "g-new")
    assert md_path == tmp_path / "out" / "nested" / "report.md"
    assert md_path.is_file() and html_path.is_file()
    html = html_path.read_text(encoding="utf-8")
    md = md_path.read_text(encoding="utf-8")

    # Static and dynamic auditors in separate tables, with the sentence on dynamic baselines.
    static = _section(html, "Leaderboard: static auditors")
    dynamic = _section(html, "Leaderboard: dynamic baselines")
    for name in STATIC:
        assert f"<td>{name}</td>" in static and name not in dynamic
    assert f"<td>{DYNAMIC}</td>" in dynamic and DYNAMIC not in static
    assert "easier question" in dynamic
    assert static.count("<table") == 1 and dynamic.count("<table") == 1
    assert "AUROC [95% CI]" in static and "TPR@5%FPR" in static and "s/organism" in static
    assert "<td>–</td>" in static  # weight_stats has no witness ASR or mask IoU
    assert "### Leaderboard: static auditors" in md and "### Leaderboard: dynamic baselines" in md
    for name in (*STATIC, DYNAMIC):
        assert f"| {name.replace('_', chr(92) + '_')} |" in md

    # One ROC plot for the one family, a curve per auditor, AUROC in the legend.
    roc = _section(html, "ROC curves")
    assert roc.count("<svg") == 1
    assert roc.count('class="curve"') == 3
    assert roc.count("AUROC") >= 3 and "false positive rate" in roc

    # Gallery: only neural_cleanse returns triggers; 4 backdoored organisms, 4 images each.
    gallery = _section(html, "Trigger gallery")
    assert "<h4>neural_cleanse (4 of 4 backdoored organisms)</h4>" in gallery
    assert "weight_stats" not in gallery
    assert gallery.count('<img src="data:image/png;base64,') == 16
    assert "target: true 3, predicted 3" in gallery and "mask IoU 0.60" in gallery

    # Provenance and description.
    prov = html[html.index("<h3>Provenance</h3>") :]
    assert "0.1.0" in prov and "digits-7" in prov and "git revision" in prov

    # Self-contained and escaped.
    assert not re.search(r"https?://|src=\"//|url\(|<link|@import", html)
    assert "<script" not in html and "<script" not in md
    assert "&lt;script&gt;" in html and "&lt;script&gt;" in md
    assert "g-old" not in html


def test_all_games_newest_last(store: Store, tmp_path: Path) -> None:
    _, html_path = write_report(store, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    assert html.index("<h2>Game g-old</h2>") < html.index("<h2>Game g-new</h2>")
    assert html.count("<svg") == 2


def test_empty_store_raises(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.sqlite") as empty, pytest.raises(ValueError, match="no results"):
        write_report(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_game_raises(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"games stored: g-new, g-old"):
        write_report(store, tmp_path / "out", "nope")


def test_png_roundtrip() -> None:
    img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body)
        chunks[tag] = body
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (4, 3)
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[r * 5 + 1 : r * 5 + 5] for r in range(3)]
    assert np.array_equal(np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(3, 4), img)


def test_odd_games_do_not_crash(tmp_path: Path) -> None:
    """One backdoored organism with an RGB trigger, a garbled finding trigger, no clean ones."""
    rgb = Trigger(mask=np.eye(4), pattern=np.random.default_rng(1).random((3, 4, 4)))
    secret = Secret(
        backdoored=True,
        attack="badnets",
        trigger=rgb.to_dict(),
        target=1,
        clean_accuracy=0.9,
        salt="00",
    )
    finding = Finding(
        auditor="nc",
        p_violation=0.9,
        target=2,
        trigger={"mask": [[1.0]], "pattern": [1.0]},
        cost=Cost(seconds=1.0, forward=1, backward=1),
    )
    score = Score(
        organism_id="only",
        auditor="nc",
        family="cifar",
        attack="badnets",
        backdoored=True,
        dynamic=False,
        p_violation=0.9,
        flagged=True,
        predicted_target=2,
        true_target=1,
        target_correct=False,
        witness_asr=None,
        witness_in_threat_model=None,
        mask_iou=None,
        seconds=1.0,
        forward=1,
        backward=1,
        error=None,
    )
    with Store(tmp_path / "odd.sqlite") as store:
        store.add("g", score, finding, secret, seed=7)
        _, html_path = write_report(store, tmp_path / "out")
    html = html_path.read_text(encoding="utf-8")
    assert "unreadable trigger" in html and "No curve can be drawn" in html
    assert html.count('<img src="data:image/png;base64,') == 2  # the true RGB trigger
    assert "No dynamic baselines in this game." in html


def test_token_and_additive_triggers_are_described_in_words(tmp_path: Path) -> None:
    pattern = TokenPattern(tokens=(3, 5), positions=(1, 3)).to_dict()
    shift = AdditiveTrigger(np.array([3.0, 4.0])).to_dict()
    with Store(tmp_path / "r.sqlite") as store:
        for org, family, trigger in (("tok", "maxofk", pattern), ("add", "rff", shift)):
            secret = Secret(backdoored=True, attack="x", trigger=trigger, target=1,
                            clean_accuracy=1.0, salt="00")  # fmt: skip
            finding = Finding(auditor="a", p_violation=0.9, target=1, trigger=trigger,
                              cost=Cost(seconds=1, forward=0, backward=0))  # fmt: skip
            score = Score(organism_id=org, auditor="a", family=family, attack="x",
                          backdoored=True, dynamic=False, p_violation=0.9, flagged=True,
                          predicted_target=1, true_target=1, target_correct=True,
                          witness_asr=1.0, witness_in_threat_model=True, mask_iou=None,
                          seconds=1, forward=0, backward=0, error=None)  # fmt: skip
            store.add("g", score, finding, secret, seed=0)
        md, html = write_report(store, tmp_path / "out")
    text = html.read_text()
    assert "3@1, 5@3" in text and "||delta||_2 = 5.00" in text
    assert "unreadable" not in text + md.read_text()


def test_line_plot_draws_one_polyline_per_series_and_escapes_labels() -> None:
    svg = line_svg(
        ["16", "64"],
        [Series("a <b>", [0.2, 0.9]), Series("c", [0.5, 0.5], dashed=True)],
        "t",
        x_label="d",
        y_label="AUROC",
    )
    assert svg.count('class="series"') == 2 and "a &lt;b&gt;" in svg and "<b>" not in svg
