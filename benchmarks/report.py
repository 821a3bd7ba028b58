"""How big the HTML report gets and how fast Chromium opens it, at 1,000 scenarios x 3 models.

Scripted backends stand in for the models (the report's cost does not depend on who wrote the
outputs): a chatty base, a tuned model that breaks one scenario in five in varied ways, and the
tuned model under grounded decoding. Reports the file's size, the time to render it in Python, and
Chromium's time to the load event and to the first filter applied, at 1400 px. Writes JSON.

    .venv/bin/python -m benchmarks.report --scenarios 1000 --out reports/benchmark-report.json

(as a module from the checkout: it drives Chromium the way the browser tests do, tests/browser.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness.evaluation import Evaluation
from harness.models import FakeBackend
from harness.report import render_report, write_report
from harness.schema import dumps
from harness.suite import Suite, SuiteOptions
from tests.browser import browser


def _broken(case, i: int) -> str:
    e = case.expected
    kinds = [
        lambda: "Sure! " + dumps(e),
        lambda: dumps({**e, "symptoms": ["cough"]}),
        lambda: dumps({**e, "patient": {**e["patient"], "ageInt": 40}}),
        lambda: dumps({**e, "medicationStatement": [{"medication": "Amlin", "dose": None}]}),
        lambda: dumps({**e, "reasonCode": []}),
    ]
    return kinds[i % len(kinds)]()


def summary(n: int, folder: Path) -> dict:
    suite = Suite(SuiteOptions(adapter=None, scenario_sets=("test",), test_split_size=n, report_dir=folder,
                               decodings=("free", "grounded"), gate_decodings=("free", "grounded")))
    cases = suite.scenarios
    tuned = {c.note: (_broken(c, i) if i % 5 == 0 else dumps(c.expected)) for i, c in enumerate(cases)}
    suite.evaluation = Evaluation(cases, {
        "base:free": lambda: FakeBackend(lambda note: "Here is the summary: " + note, name="base"),
        "tuned:free": lambda: FakeBackend(tuned, name="tuned"),
        "tuned:grounded": lambda: FakeBackend({c.note: dumps(c.expected) for c in cases}, name="tuned-g"),
    }, cache=False)
    for name in suite.evaluation.roles:
        suite.evaluation.run(name)
    return suite.summary(complete=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmark-report.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        s = summary(args.scenarios, folder)
        t0 = time.perf_counter()
        render_report(s)
        render_s = time.perf_counter() - t0
        path = folder / "report.html"
        write_report(s, path)
        size = path.stat().st_size
        rows = sum(len(r["scenarios"]) for r in s["roles"].values())
        with browser() as b:
            page = b.new_page(viewport={"width": 1400, "height": 900})
            t0 = time.perf_counter()
            page.goto(path.as_uri(), wait_until="load")
            load_s = time.perf_counter() - t0
            nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())")
            t0 = time.perf_counter()
            page.select_option("#role-filter", "tuned:free")
            page.check("#failures-only")
            shown = page.locator(".scenario-row:visible").count()
            filter_s = time.perf_counter() - t0
            overflow = page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    nav = json.loads(nav)
    result = {"scenarios": args.scenarios, "rows": rows, "bytes": size,
              "render_s": round(render_s, 2), "chromium_load_s": round(load_s, 2),
              "dom_content_loaded_ms": round(nav["domContentLoadedEventEnd"]),
              "load_event_ms": round(nav["loadEventEnd"]), "filter_s": round(filter_s, 2),
              "rows_after_filter": shown, "horizontal_overflow": overflow}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
