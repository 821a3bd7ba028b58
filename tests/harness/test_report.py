"""HTML reports: content, escaping (proved in a real browser), atomic and incomplete runs, the index."""

import json

import pytest

from harness.diff import field_of, field_rows
from harness.evaluation import Evaluation
from harness.models import FakeBackend
from harness.report import gate_lines, render_report, scenario_rows, taxonomy, write_index, write_report
from harness.schema import dumps
from harness.suite import Suite, SuiteOptions, write_summary
from scenarios import CURATED, SEED
from tests.browser import browser, screenshot, shows

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


def test_gate_lines_write_rates_to_three_decimals_and_counts_as_counts():
    summary = {"gate": {"passed": False, "baseline": None, "variants": {"tuned:free": {
        "passed": False, "threshold_misses": {"field_f1": [0.7654, 0.79], "ungrounded_values": [90.0, 60.0]},
        "targets_not_met": {"ungrounded_values": [90.0, 0.0]}, "worse_than_base": {}}}}}
    lines = gate_lines(summary)
    assert "    threshold missed: field_f1 = 0.765 < 0.790" in lines
    assert "    threshold missed: ungrounded_values = 90 > 60" in lines
    assert "    target not yet met (reported, not gating): ungrounded_values = 90 > target 0" in lines


def test_a_variants_verdict_says_what_failed_it():
    comparison = {"shared": 119, "flipped_to_fail": ["test-001"], "flipped_to_pass": [], "p_value": 0.01,
                  "f1_diff": -0.04, "f1_interval": [-0.06, -0.02], "reasons": ["10 pass->fail"], "worse": True}
    variants = {
        "tuned:free": {"passed": False, "threshold_misses": {}, "worse_than_base": {}, "comparison": comparison},
        "tuned:grounded": {"passed": False, "threshold_misses": {"field_f1": [0.8, 0.91], "med_count": [0.7, 0.88]},
                           "worse_than_base": {"field_f1": [0.8, 0.9]}, "base": "base:free"},
        "tuned:free@none": {"passed": True, "threshold_misses": {}, "worse_than_base": {}}}
    lines = gate_lines({"gate": {"passed": False, "baseline": "baseline.json", "variants": variants}})
    assert "  tuned:free: FAILED: every floor met, but worse than the baseline" in lines
    assert "  tuned:grounded: FAILED: 2 floors missed; worse than base:free" in lines
    assert "  tuned:free@none: passed" in lines


def test_gate_lines_show_the_decimals_that_tell_a_miss_from_its_floor():
    summary = {"gate": {"passed": False, "baseline": None, "variants": {"tuned:free": {
        "passed": False, "threshold_misses": {"json_valid": [113 / 119, 0.95]}, "worse_than_base": {}}}}}
    assert "    threshold missed: json_valid = 0.9496 < 0.9500" in gate_lines(summary)


def test_notes_and_outputs_are_escaped(tmp_path):
    html = render_report(_summary(tmp_path))
    assert "<script>alert('x')</script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_a_looped_answer_is_marked(tmp_path):
    from harness.evaluation import evaluate_result
    from harness.generation import Result
    from harness.models import Generation

    summary = _summary(tmp_path)
    case = SEED[0]
    looped = Generation(text="again again again", seconds=0.0, new_tokens=3, stopped=False, looped=True)
    outcome = evaluate_result(case, Result(case.note, looped)).to_dict()
    assert outcome["looped"] and not outcome["stopped"]
    summary["roles"]["base:free"]["scenarios"][case.id].update(outcome)
    assert render_report(summary).count("cut where the model began repeating itself") == 1


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


def _no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.mark.slow
@pytest.mark.browser
def test_report_in_headless_chromium_reads_filters_and_keeps_script_as_text(tmp_path):
    summary = _summary(tmp_path, tuned_breaks=("seed-3", "meds-4"))
    folder = write_summary(summary, tmp_path)
    write_report(summary, folder / "report.html")
    write_index(tmp_path)
    rows = ".scenario-row:visible"
    with browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto((folder / "report.html").as_uri())
        for selector in ("#gate-verdict", "#metrics-table", "#taxonomy", "#scenario-table"):
            assert page.locator(selector).is_visible(), selector
        assert page.locator("#gate-verdict").inner_text().startswith("gate: FAILED")
        assert page.locator("pre.note", has_text="<script>alert('x')</script>").count() == 2  # text, both roles
        assert dialogs == []  # the note's script never ran
        assert page.evaluate("document.querySelectorAll('main script').length") == 0
        total = page.locator(".scenario-row").count()
        assert page.locator(rows).first.get_attribute("data-passed") == "no"  # failures first
        assert not page.locator(".scenario-row .body").first.is_visible()  # one line until opened
        page.select_option("#role-filter", "tuned:free")
        page.check("#failures-only")
        assert page.locator(rows).count() == 2
        page.select_option("#kind-filter", "invented key")
        page.select_option("#field-filter", "symptoms")
        assert page.locator(rows).count() == 2
        page.fill("#text-filter", "tariq")  # only one of the two broken notes names him (case folded)
        assert page.locator(rows).count() == 1
        assert "model=tuned%3Afree" in page.url and "q=tariq" in page.url
        view = page.url
        page.goto("about:blank")
        page.goto(view)  # the view lives in the link
        shows(page.locator(rows), 1)
        assert page.input_value("#text-filter") == "tariq"
        page.locator(rows).first.locator("summary").click()
        opened = page.locator(".scenario-row[open] .body")
        assert "invented keys: symptoms" in opened.inner_text()  # opened: the field diff and what was wrong
        fields = opened.locator("table.fields tr")  # a header, then 4 patient fields, 2 reasons, 4 medications
        assert fields.count() == 11 and opened.locator("table.fields tr.field-ok").count() == 10
        assert opened.locator("mark").count() >= 10
        page.goto((folder / "report.html").as_uri())
        # a count in the error taxonomy links to its scenarios
        page.locator('#taxonomy .card[data-role="tuned:free"] a', has_text="no_invented_keys").click()
        failing = "r => r.filter(x => x.dataset.failed.includes('|no_invented_keys|')).length"
        shows(page.locator(rows), 2)
        assert page.locator(rows).evaluate_all(failing) == 2
        for width in (1400, 1024):
            page.set_viewport_size({"width": width, "height": 900})
            page.goto((folder / "report.html").as_uri())
            page.locator(".scenario-row summary").first.click()
            assert _no_horizontal_overflow(page), width
            shot = screenshot(page, f"report-{width}.png")
            assert page.locator(rows).count() == total
            page.goto((tmp_path / "index.html").as_uri())
            assert page.locator("#runs a", has_text=summary["run_id"]).is_visible() and _no_horizontal_overflow(page)
            screenshot(page, f"index-{width}.png")
    assert shot.stat().st_size > 10_000


def test_error_taxonomy_counts_scenarios_by_field_and_kind(tmp_path):
    summary = _summary(tmp_path, tuned_breaks=("seed-3", "meds-4"))
    t = taxonomy([r for r in scenario_rows(summary) if r["role"] == "tuned:free"])["tuned:free"]
    assert t["failing"] == 2 and t["fields"] == {"symptoms": {"invented key": 2}}
    assert t["checks"] == {"no_invented_keys": 2, "schema_valid": 2}


def test_field_rows_pair_expected_and_output_and_flag_ungrounded_values():
    case = next(c for c in SEED if c.id == "seed-1")  # John Doe, 55y, T2DM, Metformin 500mg
    output = dumps({**case.expected, "patient": {**case.expected["patient"], "ageInt": 56},
                    "medicationStatement": [{"medication": "Amlin", "dose": {"value": 500, "unit": "mg"}}]})
    rows = {r["path"]: r for r in field_rows(output, case.expected, case.note)}
    assert rows["patient.name"]["status"] == "ok"
    assert rows["patient.ageInt"]["status"] == "wrong value" and rows["patient.ageInt"]["ungrounded"] == ["56"]
    assert rows["medicationStatement[Metformin]"]["status"] == "missing"
    assert rows["medicationStatement[Amlin]"] == {"path": "medicationStatement[Amlin]", "expected": "—",
                                                  "got": "Amlin · 500 mg", "status": "extra", "ungrounded": ["Amlin"]}
    assert field_of("medicationStatement[0].dose.unit") == field_of("medicationStatement[Metformin].dose")
