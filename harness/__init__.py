"""Sunrise evaluation harness: schema v1, scoring, models, cached generation, the gate and reports.

Importing this package is cheap: torch and transformers load only when a model does.
"""

from harness.checks import CHECKS, Verdict, run_checks
from harness.errors import AdapterError, HarnessError, InputError, ModelNotFoundError
from harness.gate import Thresholds, compare
from harness.generation import Generator, Result
from harness.grammar import DECODINGS
from harness.grounding import ValueGrounding, ground_summary
from harness.models import FakeBackend, Generation, GenerationSettings, HFBackend, ModelSpec, load_backend
from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel
from harness.schema import RESOURCE_TYPE, SCHEMA, is_valid, schema_errors, validate_text
from harness.scoring import Aggregate, CaseScore, aggregate, parse_output, score_case

__all__ = [
    "CHECKS", "DECODINGS", "RESOURCE_TYPE", "SCHEMA", "AdapterError", "Aggregate", "CaseScore", "FakeBackend",
    "Generation", "GenerationSettings", "Generator", "HFBackend", "HTTPOptions", "HarnessError", "InputError",
    "ModelNotFoundError", "ModelSpec", "OpenAIBackend", "Result", "ServedModel", "Thresholds", "ValueGrounding",
    "Verdict", "aggregate", "compare", "ground_summary", "is_valid", "load_backend", "parse_output", "run_checks",
    "schema_errors", "score_case", "validate_text",
]
