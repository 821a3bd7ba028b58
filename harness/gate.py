"""The adapter gate: thresholds, and a paired comparison with a baseline run.

Two runs are compared scenario by scenario, never as two averages: pass/fail flips are tested with
an exact one-sided McNemar (sign) test, and the per-scenario field-F1 difference gets a paired
bootstrap interval. A new adapter is "worse beyond noise" when either says so.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import asdict, dataclass, field, fields
from math import comb
from pathlib import Path


@dataclass(frozen=True)
class Thresholds:
    """Metric levels for the tuned model, read from a [tool.sunrise.<table>] of pyproject.toml.

    Two tables use this shape: `thresholds`, the gate's floors (missing one fails the run), and
    `targets`, the quality the project aims at (shown in every report, never failing a run). The
    defaults here are the targets. Rates are floors; the counts in CEILINGS are maxima.
    """

    json_valid: float = 1.0  # outputs that are one JSON document alone
    schema_valid: float = 0.98
    null_age: float = 1.0  # ageInt null whenever the note states no age
    med_count: float = 0.95  # one entry per medication
    field_f1: float = 0.95  # micro F1 over all field paths
    grounded: float = 1.0  # outputs whose every value comes from the note
    ungrounded_values: float = 0  # values not in their note, counted over the run (a maximum)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in CEILINGS:
                if not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"threshold {f.name} is a count: a number >= 0, got {value!r}")
            elif not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"threshold {f.name} must be a number in [0, 1], got {value!r}")

    @classmethod
    def from_pyproject(cls, path: Path, table: str = "thresholds", decoding: str | None = None) -> Thresholds:
        """The table's values; for a decoding mode, [tool.sunrise.<table>-<mode>] (e.g.
        [tool.sunrise.thresholds-grounded]) overrides them."""
        values = {}
        for name in (table, f"{table}-{decoding}" if decoding else None):
            sub = _sunrise_table(path, name) if name else {}
            unknown = sorted(set(sub) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown metric(s) in {path} [tool.sunrise.{name}]: {', '.join(unknown)}")
            values.update(sub)
        return cls(**values)

    def with_overrides(self, overrides: dict[str, float]) -> Thresholds:
        return Thresholds(**{**asdict(self), **overrides})

    def misses(self, metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
        """{metric: (value, limit)} for every floor not reached and every ceiling exceeded."""
        return {name: (metrics[name], limit) for name, limit in asdict(self).items()
                if not meets(name, metrics[name], limit)}


def _sunrise_table(path: Path, table: str) -> dict:
    """[tool.sunrise.<table>] of a pyproject.toml ({} when the file or the table is absent)."""
    if not Path(path).is_file():
        return {}
    return tomllib.loads(Path(path).read_text()).get("tool", {}).get("sunrise", {}).get(table, {})


def gate_settings(path: Path) -> dict[str, tuple[str, ...]]:
    """What the gate judges, from [tool.sunrise.gate] in pyproject.toml: `decoding`, the decoding modes
    (default: free), and `quantization`, the base numerics the adapter will be served with (default: nf4)."""
    table = _sunrise_table(path, "gate")
    defaults = {"decoding": ["free"], "quantization": ["nf4"]}
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise ValueError(f"unknown key(s) in {path} [tool.sunrise.gate]: {', '.join(unknown)}")
    out = {}
    for key, default in defaults.items():
        names = table.get(key, default)
        if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
            raise ValueError(f"[tool.sunrise.gate] {key} in {path} must be a list of names, got {names!r}")
        out[key] = tuple(names)
    return out


# Metrics where lower is better: their thresholds are maxima.
CEILINGS = frozenset({"ungrounded_values"})


def meets(metric: str, value: float, limit: float) -> bool:
    return value <= limit if metric in CEILINGS else value >= limit


def figures(metric: str, value: float, limit: float) -> tuple[str, str]:
    """A value and the limit it is compared with, as written in verdicts: counts (the ceilings) as
    counts; rates to three decimals, or more where three would hide a miss (113 of 119 answers valid
    against a floor of 0.95 is 0.9496 < 0.9500, not 0.950 < 0.950)."""
    if metric in CEILINGS:
        return f"{value:g}", f"{limit:g}"
    for digits in range(3, 7):
        shown = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if shown[0] != shown[1] or value == limit:
            break
    return shown


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact p-value of seeing >= `worse` pass->fail flips among the discordant pairs if
    flips in either direction were equally likely (exact McNemar)."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(worse, n + 1)) / 2**n


def bootstrap_diff(new: list[float], old: list[float], resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference (new - old) with a percentile bootstrap interval; seeded, so repeatable."""
    if len(new) != len(old):
        raise ValueError("paired samples must have equal length")
    if not new:
        return 0.0, 0.0, 0.0
    diffs = [a - b for a, b in zip(new, old, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return sum(diffs) / n, lo, hi


@dataclass(frozen=True)
class Comparison:
    shared: int  # scenarios present in both runs
    flipped_to_fail: list[str]
    flipped_to_pass: list[str]
    p_value: float
    f1_diff: float
    f1_interval: tuple[float, float]
    alpha: float = 0.05
    reasons: list[str] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return {**asdict(self), "worse": self.worse}


def compare(new: dict[str, dict], old: dict[str, dict], alpha: float = 0.05) -> Comparison:
    """Compare per-scenario results ({id: {"passed": bool, "f1": float}}) of two runs of one role."""
    shared = sorted(set(new) & set(old))
    to_fail = [s for s in shared if old[s]["passed"] and not new[s]["passed"]]
    to_pass = [s for s in shared if not old[s]["passed"] and new[s]["passed"]]
    p = sign_test_p(len(to_fail), len(to_pass))
    diff, lo, hi = bootstrap_diff([new[s]["f1"] for s in shared], [old[s]["f1"] for s in shared])
    reasons = []
    if p < alpha:
        reasons.append(f"{len(to_fail)} scenarios flipped pass->fail against {len(to_pass)} fail->pass "
                       f"(exact McNemar, one-sided p={p:.4f} < {alpha})")
    if hi < 0:
        reasons.append(f"per-scenario field F1 fell by {-diff:.3f} (95% bootstrap interval "
                       f"[{lo:.3f}, {hi:.3f}] lies below 0)")
    return Comparison(len(shared), to_fail, to_pass, p, diff, (lo, hi), alpha, reasons)
