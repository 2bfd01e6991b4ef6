"""The HTML report in a real browser: headless Debian chromium driven through chromedriver.

A report that is well-formed text can still be blank in a browser (a script blocked by the
page's own Content-Security-Policy, an image that does not decode, an SVG of size zero), so
these tests open the report from disk and look at the live DOM. ``make test`` installs
chromium and chromium-driver when they are missing; without them these tests fail, never
skip, so a CI run cannot pass without looking at the page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from auditgame.finding import Cost, Finding
from auditgame.game import AuditorSpec, Game, play
from auditgame.report import write_report
from auditgame.run.local import LocalExecutor
from auditgame.score import Score
from auditgame.secret import Secret
from auditgame.store import Store

# weight_stats by its published threshold: calibrated, it would first train 64 clean
# reference models.
WEIGHT_STATS = AuditorSpec(name="weight_stats", params={"calibrate": False})

EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the browser tests need Debian's chromium and chromedriver "
            f"(found chromium: {chromium}, chromedriver: {driver}); `make test` installs them "
            "(apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1600")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield session
    session.quit()


@pytest.fixture(scope="module")
def report(tiny_zoo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real game on the tiny zoo: a short, uncalibrated neural_cleanse (triggers to draw; no
    shadow zoo to train) and weight_stats."""
    folder = tmp_path_factory.mktemp("browser")
    game = Game(
        zoo=tiny_zoo.zoo.root,
        auditors=[
            AuditorSpec(name="neural_cleanse", params={"steps": 20, "calibrate": False}),
            WEIGHT_STATS,
        ],
    )
    with Store(folder / "results.sqlite") as store:
        play(game, tiny_zoo.key, store, LocalExecutor(1))
        _, html = write_report(store, folder / "report")
    return html


def _column(browser: WebDriver, table: str, index: int) -> list[str]:
    script = (
        "return Array.from(document.querySelector(arguments[0]).tBodies[0].rows)"
        ".map(r => r.cells[arguments[1]].getAttribute('data-v') ?? r.cells[arguments[1]]"
        ".textContent)"
    )
    return list(browser.execute_script(script, table, index))


def _rows(browser: WebDriver, table: str) -> list[str]:
    script = (
        "return Array.from(document.querySelector(arguments[0]).tBodies[0].rows)"
        ".map(r => r.cells[0].textContent + ' / ' + r.cells[1].textContent)"
    )
    return list(browser.execute_script(script, table))


def _header(browser: WebDriver, table: str, title: str) -> WebElement:
    return browser.find_element(
        By.XPATH,
        f"(//table[contains(@class, '{table}')])[1]//th[button[normalize-space() = '{title}']]",
    )


def _severe(browser: WebDriver) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_report_renders_sorts_plots_and_draws(browser: WebDriver, report: Path) -> None:
    browser.get(report.as_uri())
    assert browser.title == "auditgame report"

    # The leaderboard renders: 2 auditors x (all, badnets, blend).
    board = "table.leaderboard"
    rows = browser.find_elements(By.CSS_SELECTOR, f"{board} tbody tr")
    assert len(rows) == 6 and all(r.is_displayed() for r in rows)
    before = _rows(browser, board)
    assert before[0] == "neural_cleanse / all"

    # Clicking a numeric header sorts rows by value, ascending then descending.
    brier = _header(browser, "leaderboard", "Brier")
    index = int(brier.get_property("cellIndex"))
    values = [float(v) for v in _column(browser, board, index)]
    expected = [row for _, row in sorted(zip(values, before, strict=True), key=lambda p: p[0])]
    assert expected != before, "the Brier scores happen to be sorted already; pick a column"
    brier.find_element(By.TAG_NAME, "button").click()
    assert brier.get_attribute("aria-sort") == "ascending"
    assert _rows(browser, board) == expected
    assert [float(v) for v in _column(browser, board, index)] == sorted(values)
    brier.find_element(By.TAG_NAME, "button").click()
    assert brier.get_attribute("aria-sort") == "descending"
    assert [float(v) for v in _column(browser, board, index)] == sorted(values, reverse=True)

    # A text header sorts by text; only the sorted header carries aria-sort.
    auditor = _header(browser, "leaderboard", "auditor")
    auditor.find_element(By.TAG_NAME, "button").click()
    auditor.find_element(By.TAG_NAME, "button").click()
    assert auditor.get_attribute("aria-sort") == "descending"
    assert brier.get_attribute("aria-sort") is None
    assert [r.split(" / ")[0] for r in _rows(browser, board)] == ["weight_stats"] * 3 + [
        "neural_cleanse"
    ] * 3

    # The ROC plot is laid out with a real size and has a curve per auditor.
    plot = browser.find_element(By.CSS_SELECTOR, "svg.roc")
    assert plot.size["width"] > 100 and plot.size["height"] > 100
    assert len(plot.find_elements(By.CSS_SELECTOR, "polyline.curve")) == 2

    # Gallery images decoded: both backdoored organisms, planted and reconstructed.
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('figure.trigger img'))"
        ".map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == 2 * 4
    assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes

    # The page's own Content-Security-Policy let our script run and blocked nothing else.
    assert _severe(browser) == []


def test_drill_down_opens_from_the_gallery_and_filters(browser: WebDriver, report: Path) -> None:
    browser.get(report.as_uri())
    organisms = browser.find_elements(By.CSS_SELECTOR, "details.organism")
    assert len(organisms) == 4 and not any(d.get_property("open") for d in organisms)

    link = browser.find_element(By.CSS_SELECTOR, "figure.trigger figcaption a")
    target = browser.find_element(By.ID, link.get_attribute("href").split("#")[1])
    link.click()
    assert target.get_property("open") is True
    audits = target.find_elements(By.CSS_SELECTOR, "table.audits tbody tr")
    assert {a.find_element(By.TAG_NAME, "td").text for a in audits} == {
        "neural_cleanse",
        "weight_stats",
    }
    assert all(a.is_displayed() for a in audits)

    box = browser.find_element(By.CSS_SELECTOR, ".organisms input[type=search]")
    assert box.is_displayed()
    box.send_keys("attack:blend")
    shown = [d for d in organisms if d.is_displayed()]
    assert len(shown) == 1 and "blend" in shown[0].text
    assert browser.find_element(By.CSS_SELECTOR, ".organisms .count").text == "1 of 4 shown"

    # A leaderboard attack link sets the filter to that attack.
    browser.find_element(
        By.CSS_SELECTOR, "table.leaderboard a[data-filter='attack:badnets']"
    ).click()
    assert box.get_property("value") == "attack:badnets"
    shown = [d for d in organisms if d.is_displayed()]
    assert len(shown) == 1 and "badnets" in shown[0].text


def test_hostile_store_strings_stay_text_in_the_browser(browser: WebDriver, tmp_path: Path) -> None:
    """Markup in an organism id, an error and evidence neither runs nor adds elements."""
    secret = Secret(backdoored=False, attack=None, trigger=None, target=None,
                    clean_accuracy=1.0, salt="00")  # fmt: skip
    with Store(tmp_path / "r.sqlite") as store:
        for org in (EVIL, "plain"):
            finding = Finding(auditor=EVIL, p_violation=0.5, evidence={EVIL: EVIL},
                              cost=Cost(seconds=1, forward=0, backward=0), error=EVIL)  # fmt: skip
            score = Score(organism_id=org, auditor=EVIL, family="digits", attack="clean",
                          backdoored=False, dynamic=False, p_violation=0.5, flagged=True,
                          predicted_target=None, true_target=None, target_correct=None,
                          witness_asr=None, witness_in_threat_model=None,
                          seconds=1, forward=0, backward=0,
                          error=EVIL)  # fmt: skip
            store.add("g", score, finding, seed=0)
            store.reveal("g", {score.organism_id: secret})
        _, html = write_report(store, tmp_path / "out")
    browser.get(html.as_uri())
    assert browser.title == "auditgame report"
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    assert browser.find_elements(By.CSS_SELECTOR, "img[src=x]") == []
    assert EVIL in browser.find_element(By.CSS_SELECTOR, "details.organism summary").text
