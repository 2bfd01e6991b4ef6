"""The report: both files, sortable static/dynamic tables, ROC SVGs, the trigger gallery, the
per-organism drill-down, escaping of hostile store strings, and serving it on loopback."""

from __future__ import annotations

import re
import struct
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from auditgame import registry
from auditgame.cli import app
from auditgame.finding import Cost, Finding
from auditgame.image.trigger import Trigger
from auditgame.maxofk.pattern import TokenPattern
from auditgame.report import content, report_server, report_url, write_report
from auditgame.report.svg import Series, line_svg, png_bytes
from auditgame.score import Score
from auditgame.secret import Secret
from auditgame.store import Store
from auditgame.vector.perturbation import AdditiveTrigger

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
        scored = (0.0 if bad else 1.0) if error else p
        finding = Finding(
            auditor=auditor,
            p_violation=None if error else p,
            target=3 if found is not None else None,
            trigger=found.to_dict() if found is not None else None,
            cost=Cost(seconds=0.25 + i, forward=10, backward=0),
            error=error,
        )
        score = Score(
            organism_id=org,
            auditor=auditor,
            family="digits",
            violation="mask_pattern",
            attack=attack or "clean",
            backdoored=bad,
            dynamic=dynamic,
            # A failure scores as the worst answer (score.score).
            p_violation=scored,
            flagged=scored >= 0.5,
            predicted_target=finding.target,
            true_target=secret.target,
            target_correct=(finding.target == secret.target) if bad else None,
            witness_asr=0.9 if found is not None else None,
            witness_in_threat_model=True if found is not None else None,
            recovery={"mask_iou": 0.6} if found is not None else {},
            seconds=finding.cost.seconds,
            forward=10,
            backward=0,
            error=error,
        )
        store.add(game, score, finding, seed=seed)
        store.reveal(game, {score.organism_id: secret})


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
    """The HTML between heading ``title`` and the next ``<h3``."""
    start = html.index(f">{title}</h3>")
    end = html.find("<h3", start + 1)
    return html[start:end]


def test_report_contents(store: Store, tmp_path: Path) -> None:
    md_path, html_path = write_report(store, tmp_path / "out" / "nested", "g-new")
    assert md_path == tmp_path / "out" / "nested" / "report.md"
    assert md_path.is_file() and html_path.is_file()
    html = html_path.read_text(encoding="utf-8")
    md = md_path.read_text(encoding="utf-8")

    # Static and dynamic auditors in separate, sortable tables.
    static = _section(html, "Leaderboard: static auditors")
    dynamic = _section(html, "Leaderboard: dynamic baselines")
    for name in STATIC:
        assert f"<td>{name}</td>" in static and name not in dynamic
    assert f"<td>{DYNAMIC}</td>" in dynamic and DYNAMIC not in static
    assert "easier question" in dynamic
    assert static.count('<table class="sortable leaderboard">') == 1
    assert dynamic.count("<table") == 1
    assert '<th scope="col"><button type="button">AUROC [95% CI]</button></th>' in static
    assert "TPR@5%FPR" in static and "s/organism" in static
    # Numbers sort by value; weight_stats has no witness ASR, so that cell sorts last.
    assert re.search(r'<td class="num" data-v="0\.\d+">0\.\d{3} \[', static)
    assert '<td class="num" data-v="">–</td>' in static
    assert "### Leaderboard: static auditors" in md and "### Leaderboard: dynamic baselines" in md
    for name in (*STATIC, DYNAMIC):
        assert f"| {name.replace('_', chr(92) + '_')} |" in md

    # One comparison plot for the one family (a curve per auditor, AUROC in the legend), then
    # per auditor a plot with a curve per attack and the pooled one.
    roc = _section(html, "ROC curves")
    assert roc.count('<svg class="roc"') == 1 + 3
    comparison, per_auditor = roc.split('<details class="more">')
    assert comparison.count('class="curve"') == 3 and comparison.count("AUROC") >= 3
    assert per_auditor.count('class="curve"') == 3 * 3 and "blend: AUROC" in per_auditor

    # Gallery: one card per backdoored organism, planted above neural_cleanse's reconstruction.
    gallery = _section(html, "Trigger gallery")
    assert gallery.count('<figure class="trigger">') == 4
    assert gallery.count('<img src="data:image/png;base64,') == 4 * 4
    assert "Auditors that return no trigger: mahalanobis, weight_stats." in gallery
    assert "<b>neural_cleanse</b>mask IoU 0.60 · ASR 0.90 · target 3" in gallery
    assert "digits, badnets, target 3" in gallery and "<b>weight_stats</b>" not in gallery

    # Drill-down: every organism, every auditor, with its error; linked from the gallery.
    organisms = _section(html, "Organisms")
    assert organisms.count('<details class="organism"') == len(ORGANISMS)
    assert organisms.count("<tr><td>") == len(ORGANISMS) * 3
    assert organisms.count('class="verdict error"') == 1
    assert 'data-text="org-0 family:digits attack:badnets auditor:neural_cleanse' in organisms
    ids = set(re.findall(r' id="([^"]+)"', html))
    links = re.findall(r'href="#([^"]+)"', html)
    assert {f"g0-o{i}" for i in range(len(ORGANISMS))} <= ids
    assert set(links) <= ids and sum(link.startswith("g0-o") for link in links) >= 4
    assert "### Organisms" in md and md.count("✓") + md.count("✗") >= 2 * len(ORGANISMS)

    # Provenance and description.
    prov = html[html.index(">Provenance</h3>") :]
    assert "0.1.0" in prov and "digits-7" in prov and "git revision" in prov

    # Self-contained and escaped; the only script is ours, allowed by hash.
    assert not re.search(r"https?://|src=\"//|url\(|<link|@import", html)
    assert html.count("<script") == 1 and EVIL not in html and "<script" not in md
    assert "&lt;script&gt;" in html and "&lt;script&gt;" in md
    assert "script-src 'sha256-" in html and "default-src 'none'" in html
    assert "g-old" not in html


def test_all_games_newest_last(store: Store, tmp_path: Path) -> None:
    _, html_path = write_report(store, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    assert html.index("<h2>Game g-old</h2>") < html.index("<h2>Game g-new</h2>")
    assert html.count('<svg class="roc"') == 2 * 4
    # Each game has its own anchors, so links from one game never land in another.
    assert 'id="g0-o0"' in html and 'id="g1-o0"' in html


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
        seconds=1.0,
        forward=1,
        backward=1,
        error=None,
    )
    with Store(tmp_path / "odd.sqlite") as store:
        store.add("g", score, finding, seed=7)
        store.reveal("g", {score.organism_id: secret})
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
                          witness_asr=1.0, witness_in_threat_model=True,
                          seconds=1, forward=0, backward=0, error=None)  # fmt: skip
            store.add("g", score, finding, seed=0)
            store.reveal("g", {score.organism_id: secret})
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


def _one(store: Store, org: str, trigger: dict | None, found: dict | None, **extra: object) -> None:
    """Store one backdoored organism audited by auditor "a" (``extra`` overrides the finding)."""
    secret = Secret(backdoored=True, attack="warp", trigger=trigger, target=1,
                    clean_accuracy=1.0, salt="00")  # fmt: skip
    finding = Finding(
        auditor="a",
        p_violation=0.9,
        target=1,
        trigger=found,
        cost=Cost(seconds=1, forward=0, backward=0),
        **extra,
    )
    score = Score(organism_id=org, auditor="a", family="digits", attack="warp",
                  backdoored=True, dynamic=False, p_violation=0.9, flagged=True,
                  predicted_target=1, true_target=1, target_correct=True, witness_asr=None,
                  witness_in_threat_model=None, seconds=1, forward=0,
                  backward=0, error=finding.error)  # fmt: skip
    store.add("g", score, finding, seed=0)
    store.reveal("g", {score.organism_id: secret})


def test_triggers_of_other_kinds_are_named_not_drawn(tmp_path: Path) -> None:
    """A warping field (or any kind the report cannot draw) gets a note, not a crash."""
    warp = {"kind": "warp", "flow": np.zeros((2, 4, 4)).tolist(), "strength": 0.5}
    with Store(tmp_path / "r.sqlite") as store:
        _one(store, "w", warp, _patch().to_dict())
        _, html_path = write_report(store, tmp_path / "out")
    gallery = _section(html_path.read_text(), "Trigger gallery")
    assert "warp trigger, not drawable" in gallery and "unreadable" not in gallery
    assert gallery.count('<img src="data:image/png;base64,') == 2  # the reconstruction


def test_hostile_evidence_is_summarised_and_escaped(tmp_path: Path) -> None:
    evidence = {
        "norms": list(range(100)),
        "hits": [True, False, True],
        "note": f"{EVIL}\nsecond line",
        EVIL: 0.123456,
        "nested": {"a": 1},
    }
    with Store(tmp_path / "r.sqlite") as store:
        _one(store, f"o{EVIL}", None, None, evidence=evidence, error=f"boom {EVIL}")
        md, html_path = write_report(store, tmp_path / "out")
    html = html_path.read_text()
    assert EVIL not in html and EVIL not in md.read_text() and html.count("<script") == 1
    summary = re.search(r'<td class="evidence">([^<]*)</td>', html)
    assert summary is not None
    assert summary.group(1) == (
        "norms: 100 values, min 0, max 99; hits: 2 of 3 true; "
        "note: &lt;script&gt;alert(1)&lt;/script&gt; second line; "
        "&lt;script&gt;alert(1)&lt;/script&gt;: 0.123; nested: {a}"
    )
    assert '<td class="error">boom &lt;script&gt;' in html
    assert re.search(r'<a href="#g0-o0">o&lt;script&gt;alert\(1\)&lt;/script&gt;</a>', html)


def test_gallery_takes_attacks_in_turn_up_to_its_limit(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(content, "GALLERY_LIMIT", 2)
    _, html_path = write_report(store, tmp_path, "g-new")
    gallery = _section(html_path.read_text(), "Trigger gallery")
    assert gallery.count('<figure class="trigger">') == 2
    assert "digits, badnets, target 3" in gallery and "digits, blend, target 3" in gallery
    assert "2 of 4 backdoored organisms, taking attacks in turn" in gallery


def test_report_server_serves_the_folder_on_loopback(store: Store, tmp_path: Path) -> None:
    _, html_path = write_report(store, tmp_path, "g-new")
    server = report_server(tmp_path, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = report_url(server)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/report.html")
        assert server.server_address[1] != 0
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.read() == html_path.read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url.replace("report.html", "nope.html"), timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        report_server(tmp_path / "missing")


def test_cli_report_serve_prints_the_url_and_stops_on_ctrl_c(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []

    def interrupted(self: ThreadingHTTPServer, poll_interval: float = 0.5) -> None:
        served.append(report_url(self))
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadingHTTPServer, "serve_forever", interrupted)
    args = ["report", "--store", str(store.path), "--out", str(tmp_path / "rep"), "--serve"]
    result = CliRunner().invoke(app, [*args, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert len(served) == 1 and served[0] in result.stdout
    assert (tmp_path / "rep" / "report.html").is_file()


def test_a_report_of_built_in_kinds_imports_no_plugin(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a store runs no plugin's import-time code (an installed auditor plugin could
    rewrite the store it reads): the kinds of its rows are built in, so none is imported."""

    def refuse() -> None:
        raise AssertionError("the report imported the installed plugins")

    monkeypatch.setattr(registry, "load_plugins", refuse)
    md, _ = write_report(store, tmp_path / "out")
    assert "mask IoU" in md.read_text()
    # Words for a trigger it cannot draw, and a row of an older store that names no kind.
    pattern = {"kind": "token_pattern", "tokens": [3, 5], "positions": None}
    assert content._describe(pattern) == "tokens [3, 5] anywhere"
    assert content._kind("") is None
