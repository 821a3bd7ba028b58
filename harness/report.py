"""Self-contained HTML reports (CSS inline, plots embedded) and the index of runs.

Everything that came from a note or a model goes through Jinja2's autoescaping, so a note holding
`<script>` shows as text. Files are written atomically: a reader never sees half a report.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from harness.atomic import write_atomic
from harness.diff import diff_output, field_of, field_rows
from harness.gate import CEILINGS, figures
from harness.grounding import ground_summary, note_segments
from harness.plots import loss_curve_png, metrics_bar_png, trend_png
from harness.scoring import parse_output

HEADLINE = ("json_valid", "schema_valid", "resource_type", "no_invented_keys", "null_age", "stated_age",
            "dose_split", "med_count", "field_f1", "grounded", "ungrounded_values")
RATES = HEADLINE[:-1]  # what the bar chart and the trend plot can draw on one 0-1 axis
_ENV = Environment(loader=PackageLoader("harness", "templates"), autoescape=select_autoescape(["html", "j2"]),
                   trim_blocks=True, lstrip_blocks=True)
_ENV.filters["pretty"] = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False)
_ENV.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
_ENV.filters["metric"] = lambda x, name: "–" if x is None else (f"{x:g}" if name in CEILINGS else f"{100 * x:.1f}%")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _limit_word(metric: str) -> str:
    return ">" if metric in CEILINGS else "<"


# What the one-line comparison names, and how: the study's claim in the figures a person remembers.
CLAIM = (("schema_valid", "schema valid"), ("field_f1", "field F1"), ("grounded", "grounded"))


def comparison_line(summary: dict) -> str | None:
    """'base vs prompted vs tuned' in one line, e.g. "schema valid: base 0%, prompted 4%, tuned 94% | ...",
    each role by its first variant as it is prompted (free decoding) where it ran so, else its first."""
    chosen: dict[str, dict] = {}
    free_first = sorted(summary.get("roles", {}).items(), key=lambda item: item[1].get("decoding") != "free")
    for name, data in free_first:
        if data.get("metrics"):
            chosen.setdefault(data.get("role", name), data["metrics"])
    order = [r for r in ("base", "prompted", "tuned") if r in chosen]
    if len(order) < 2:
        return None
    return " | ".join(f"{label}: " + ", ".join(f"{r} {100 * chosen[r][key]:.0f}%" for r in order)
                      for key, label in CLAIM)


def gate_lines(summary: dict) -> list[str]:
    """The gate's verdict in plain lines, for the terminal and the report: one block per gated variant."""
    gate = summary.get("gate")
    if not gate:
        return ["gate: not evaluated (the tuned model did not run)"]
    lines = [f"gate: {'PASSED' if gate['passed'] else 'FAILED'} ({', '.join(gate['variants'])})"]
    for variant, v in gate["variants"].items():
        lines.append(f"  {variant}: {_verdict(v)}")
        for name, pair in v["threshold_misses"].items():
            value, limit = figures(name, *pair)
            lines.append(f"    threshold missed: {name} = {value} {_limit_word(name)} {limit}")
        for name, pair in v.get("targets_not_met", {}).items():
            value, target = figures(name, *pair)
            lines.append(f"    target not yet met (reported, not gating): {name} = {value} "
                         f"{_limit_word(name)} target {target}")
        for name, pair in v["worse_than_base"].items():
            tuned, base = figures(name, *pair)
            lines.append(f"    worse than {v.get('base', 'base')}: {name} = {tuned} {_limit_word(name)} {base}")
        comp = v.get("comparison")
        if comp:
            lines.append(f"    vs baseline {gate['baseline']}: {comp['shared']} shared scenarios, "
                         f"{len(comp['flipped_to_fail'])} pass->fail, {len(comp['flipped_to_pass'])} fail->pass, "
                         f"McNemar p={comp['p_value']:.4f}, field-F1 diff {comp['f1_diff']:+.3f} "
                         f"[{comp['f1_interval'][0]:+.3f}, {comp['f1_interval'][1]:+.3f}]")
            for reason in comp["reasons"]:
                lines.append(f"    worse than baseline: {reason}")
            if comp["flipped_to_fail"]:
                lines.append("    flipped pass->fail: " + ", ".join(comp["flipped_to_fail"]))
    if not summary.get("complete", True):
        lines.append("  run INCOMPLETE: interrupted before every test finished")
    return lines


def _verdict(variant: dict) -> str:
    """A gated variant's verdict with what failed it, so an adapter that met every floor and lost only the
    paired comparison reads as such, not as one that missed them."""
    if variant["passed"]:
        return "passed"
    misses = len(variant["threshold_misses"])
    failed = [f"{misses} floor{'s' * (misses != 1)} missed" if misses else "every floor met"]
    if variant["worse_than_base"]:
        failed.append(f"worse than {variant.get('base', 'base')}")
    if (variant.get("comparison") or {}).get("worse"):
        failed.append("worse than the baseline")
    return "FAILED: " + (", but " if not misses else "; ").join(failed)


def _row(role: str, scenario: str, o: dict) -> dict:
    diff = diff_output(o["output"], o["expected"], o["note"])
    obj, _ = parse_output(o["output"] or "")
    return {**o, "role": role, "scenario": scenario, "failed": [n for n, c in o["checks"].items() if not c["ok"]],
            "diff": diff, "kinds": sorted({d["kind"] for d in diff}),
            "fields": sorted({field_of(d["path"]) for d in diff}),
            "field_rows": field_rows(o["output"], o["expected"], o["note"]),
            "segments": note_segments(o["note"], [g for g in ground_summary(obj, o["note"]) if g.grounded])}


def scenario_rows(summary: dict) -> list[dict]:
    """Every scenario of every variant, failures first (then in run order), and each variant's
    minimal failing hypothesis note."""
    rows = []
    for role, data in summary["roles"].items():
        rows += [_row(role, sid, o) for sid, o in data["scenarios"].items()]
        minimal = (data.get("hypothesis") or {}).get("minimal_failure")
        if minimal:
            rows.append(_row(role, "hypothesis (minimal failing note)", minimal))
    return sorted(rows, key=lambda r: r["passed"])


def taxonomy(rows: list[dict]) -> dict:
    """Error counts per variant: by field and kind (how many scenarios show each), and by check."""
    out: dict[str, dict] = {}
    for r in rows:
        t = out.setdefault(r["role"], {"kinds": Counter(), "fields": {}, "checks": Counter(), "failing": 0})
        t["failing"] += not r["passed"]
        t["checks"].update(r["failed"])
        for field, kind in {(field_of(d["path"]), d["kind"]) for d in r["diff"]}:
            t["kinds"][kind] += 1
            t["fields"].setdefault(field, Counter())[kind] += 1
    return {role: {**t, "kinds": dict(t["kinds"].most_common()), "checks": dict(t["checks"].most_common()),
                   "fields": dict(sorted(t["fields"].items(), key=lambda kv: -sum(kv[1].values())))}
            for role, t in out.items()}


def render_report(summary: dict) -> str:
    metrics = {role: d["metrics"] for role, d in summary["roles"].items() if d["metrics"]}
    rows = scenario_rows(summary)
    return _ENV.get_template("report.html.j2").render(
        s=summary, headline=HEADLINE, metrics=metrics, rows=rows, gate=gate_lines(summary), taxonomy=taxonomy(rows),
        claim=comparison_line(summary),
        checks=sorted({c for d in summary["roles"].values() for o in d["scenarios"].values() for c in o["checks"]}),
        kinds=sorted({k for r in rows for k in r["kinds"]}), fields=sorted({f for r in rows for f in r["fields"]}),
        bar=_data_uri(metrics_bar_png(metrics, list(RATES))) if metrics else None,
        loss=_data_uri(loss_curve_png(summary["train_log"])) if summary.get("train_log") else None,
    )


def write_report(summary: dict, path: Path) -> None:
    write_atomic(path, render_report(summary))


def write_index(report_dir: Path) -> Path:
    """reports/index.html: every run in the folder, newest first, with a trend plot."""
    runs = []
    for path in sorted(Path(report_dir).glob("*/summary.json")):
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        # The first tuned variant stands for the run (summaries before decoding modes key it "tuned").
        name, tuned = next(((k, d) for k, d in s.get("roles", {}).items() if d.get("role", k) == "tuned"), ("", {}))
        runs.append({"run_id": s.get("run_id", path.parent.name), "created": s.get("created"),
                     "adapter": s.get("options", {}).get("adapter"), "complete": s.get("complete", False),
                     "decoding": tuned.get("decoding", "free") if tuned else "",
                     "gate": s.get("gate"), "metrics": tuned.get("metrics") or {},
                     "href": f"{path.parent.name}/report.html"})
    trend_runs = [r for r in runs if r["metrics"]]
    html = _ENV.get_template("index.html.j2").render(
        runs=list(reversed(runs)), headline=HEADLINE,
        trend=_data_uri(trend_png(trend_runs, ["schema_valid", "null_age", "med_count", "field_f1"]))
        if trend_runs else None)
    index = Path(report_dir) / "index.html"
    write_atomic(index, html)
    return index
