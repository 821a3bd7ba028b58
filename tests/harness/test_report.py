"""HTML reports: content, escaping (proved in a real browser), atomic and incomplete runs, the index."""

import json

import pytest

from harness.evaluation import Evaluation
from harness.models import FakeBackend
from harness.report import render_report, write_index, write_report
from harness.schema import dumps
from harness.suite import Suite, SuiteOptions, write_summary
from scenarios import CURATED, SEED
from tests.browser import browser, screenshot

HTML_CASE = next(c for c in CURATED if c.id == "html-in-note")


def _summary(tmp_path, complete=True, tuned_breaks=()):
    options = SuiteOptions(adapter=None, scenario_sets=("seed", "curated"), report_dir=tmp_path,
                           decodings=("free",), gate_decodings=("free",))
    suite = Suite(options)
    cases = suite.scenarios
    tuned = {c.note: dumps(c.expected) for c in cases}
    for cid in tuned_breaks:
        case = next(c for c in cases if c.id == cid)
        tuned[case.note] = dumps({**case.expected, "symptoms": ["x"]})
    suite.evaluation = Evaluation(cases, {
        "base:free": lambda: FakeBackend(lambda n: "Sure! " + n + " <b>bold</b>", name="base"),
        "tuned:free": lambda: FakeBackend(tuned, name="tuned"),
    }, cache=False)
    suite.evaluation.run("base:free"), suite.evaluation.run("tuned:free")
    return suite.summary(complete=complete)


def test_report_has_headline_gate_and_every_scenario(tmp_path):
    html = render_report(_summary(tmp_path, tuned_breaks=("seed-2",)))
    assert "Headline metrics" in html and 'id="metrics-chart"' in html and "data:image/png;base64," in html
    assert html.count('class="scenario-row"') == 2 * (len(SEED) + len(CURATED))
    assert "invented key" in html and "symptoms" in html and "gate: FAILED" in html
    assert "<link" not in html and "http://" not in html.replace("http://www.w3.org", "")  # self-contained


def test_notes_and_outputs_are_escaped(tmp_path):
    html = render_report(_summary(tmp_path))
    assert "<script>alert('x')</script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_incomplete_run_is_marked(tmp_path):
    html = render_report(_summary(tmp_path, complete=False))
    assert 'id="incomplete"' in html


def test_summary_and_report_are_written_atomically_and_indexed(tmp_path):
    summary = _summary(tmp_path)
    folder = write_summary(summary, tmp_path)
    write_report(summary, folder / "report.html")
    index = write_index(tmp_path)
    assert json.loads((folder / "summary.json").read_text())["run_id"] == summary["run_id"]
    assert not list(tmp_path.rglob("*.tmp")) and summary["run_id"] in index.read_text()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{half")  # a damaged run does not break the index
    assert summary["run_id"] in write_index(tmp_path).read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_report_in_headless_chromium_shows_script_as_text_and_filters(tmp_path):
    summary = _summary(tmp_path, tuned_breaks=("seed-3", "meds-4"))
    folder = write_summary(summary, tmp_path)
    write_report(summary, folder / "report.html")
    write_index(tmp_path)
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto((folder / "report.html").as_uri())
        for selector in ("#gate-verdict", "#metrics-table", "#metrics-chart", "#scenario-table"):
            assert page.locator(selector).is_visible(), selector
        assert page.locator("#gate-verdict").inner_text().startswith("gate: FAILED")
        assert page.locator("pre.note", has_text="<script>alert('x')</script>").count() == 2  # text, both roles
        assert dialogs == []  # the note's script never ran
        assert page.evaluate("document.querySelectorAll('main script').length") == 0
        page.check("#failures-only")
        page.select_option("#role-filter", "tuned:free")
        assert page.locator(".scenario-row:visible").count() == 2
        page.select_option("#check-filter", "no_invented_keys")
        assert page.locator(".scenario-row:visible").count() == 2
        page.uncheck("#failures-only")
        page.select_option("#check-filter", "")
        page.select_option("#role-filter", "")
        shot = screenshot(page, "report.png")
        page.goto((tmp_path / "index.html").as_uri())
        assert page.locator("#runs a", has_text=summary["run_id"]).is_visible()
    assert shot.stat().st_size > 10_000
