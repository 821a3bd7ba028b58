"""Model specs and backends: the scripted fake, and Hugging Face causal LMs with optional LoRA adapters.

Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside the functions that load
a model, so `import harness` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from harness.constraint import BatchConstraint, ConstraintStats, ConstraintTokenizer, close_reserve
from harness.decoding import DECODER, LOOP, Decoded, greedy_decode, whitespace_tokens
from harness.embedded import EMBEDDED_NAME, converted_gguf, embedded_gguf
from harness.errors import AdapterError, InputError, ModelNotFoundError
from harness.grammar import DECODINGS, GRAMMAR_VERSION, Decoding
from harness.hashing import folder_weights_sha256, sha256_file, sha256_text
from harness.nf4_grid import prepared_name
from harness.numerics import (
    dequantise_once,
    fold_adapter,
    invariant_products,
    nf4_kernel,
    numerics,
    pin_reproducible_blas,
    register_attention,
)
from harness.prompt import PROMPTS, Prompt, prompt_ids, read_prompt_ids
from harness.schema import dumps, empty_summary
from harness.settings import cache_root

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hugging Face hub
# (unreachable offline) and then uses its own, the one every figure here was measured with: noise in
# every run's output, so only its errors are shown.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

EMBEDDED = "embedded"
# max_new_tokens = schema skeleton + ANSWER_BOUND[0] x note tokens + ANSWER_BOUND[1]; part of the model
# identity, so cached outputs made under another bound are never reused.
ANSWER_BOUND = (3, 16)
# Free decodings a backend keeps, by prompt and bound, for constrained decodings of the same prompts to
# replay (HFBackend._free_decodes_of): more than a suite's scenarios and property test; bounded for a server.
FREE_DECODES_KEPT = 4096
# Lookahead's drafts (harness.decoding) also draw on the last answers written freely: a schema's keys.
DRAFT_ANSWERS = 2
Quantization = Literal["none", "nf4"]
DType = Literal["float32", "bfloat16", "float16"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DTYPES: tuple[str, ...] = get_args(DType)


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a base model, optional LoRA adapter, and how."""

    base: str = EMBEDDED  # "embedded", a Hugging Face id, a local folder, or a .gguf file
    adapter: str | None = None  # a peft LoRA folder (safetensors only)
    quantization: Quantization = "none"  # "nf4": 4-bit NF4 through bitsandbytes
    dtype: DType = "float32"  # compute dtype; float32 for GPUs without bf16 (GTX 10xx)
    attn_implementation: str | None = None  # None: SDPA in float64 (batch-invariant, harness.numerics); "eager", "sdpa"
    # Merge LoRA into the weights in memory (faster). Under nf4, into the weights dequantised once (a CPU),
    # never quantised again (harness.numerics.fold_adapter); True where that cannot be done is an error,
    # "auto" keeps the adapter attached there. The identity's "merged" says which was done.
    merge_adapter: bool | Literal["auto"] = False
    device: str | None = None  # None: cuda if available, else cpu

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.merge_adapter not in (True, False, "auto"):
            raise ValueError(f"merge_adapter must be True, False or 'auto', got {self.merge_adapter!r}")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; recorded with every result and part of every cache key."""

    max_new_tokens: int | None = None  # None: a bound derived from the schema and the note's length
    batch_size: int | None = None  # None: automatic, from a token budget
    greedy: bool = True  # deterministic: same input, same output
    decoding: Decoding = "free"  # free | schema (only schema-v1 JSON) | grounded (and only the note's words)
    prompt: Prompt = "trained"  # trained (what adapters learn) | engineered (the zero-shot baseline), harness.prompt

    def __post_init__(self):
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {self.prompt!r}")

    @property
    def constrained(self) -> bool:
        return self.decoding != "free"

    def to_dict(self) -> dict:
        """The settings as recorded in summaries and cache keys; a constrained mode names its grammar."""
        return {**asdict(self), **({"grammar": GRAMMAR_VERSION} if self.constrained else {})}


def answer_bound(settings: GenerationSettings, skeleton: int, note_length: int) -> int:
    """max_new_tokens as given, else the schema's skeleton + ANSWER_BOUND[0] x the note + ANSWER_BOUND[1],
    in the backend's unit (tokens in process; UTF-8 bytes over HTTP, never fewer than tokens)."""
    if settings.max_new_tokens is not None:
        return settings.max_new_tokens
    per_note_unit, margin = ANSWER_BOUND
    return skeleton + per_note_unit * max(0, note_length) + margin


def token_limit(bound: int, note: str, settings: GenerationSettings) -> int:
    """The most new tokens a note may take: its bound, plus the room to close a constrained answer."""
    return bound + close_reserve(note) if settings.constrained else bound


@dataclass(frozen=True)
class Generation:
    text: str
    seconds: float  # wall time of the batch this output came from, shared out per output
    new_tokens: int
    stopped: bool  # ended at the end-of-turn token (False: hit max_new_tokens, or repeated itself)
    cached: bool = False
    error: str | None = None  # why this note has no usable output (a constrained decode that could not finish)
    transient: bool = False  # the error may not recur (a timeout, a refused connection): never cached
    prompt_tokens: int | None = None  # where the backend counts them (served models report usage with them)
    looped: bool = False  # it repeated itself and was stopped there (constrained: closed from there)


# Called with a note's index and its answer so far, as the answer grows (a server streams it); the
# Generation returned is the whole answer all the same, unless the listener returns True: nobody reads
# that note's answer any more (its client closed the stream), and the backend stops it where it stands,
# as at its bound.
Listener = Callable[[int, str], bool | None]


class Backend(Protocol):
    """Anything that turns notes into raw outputs. `identity` names model and weights exactly."""

    identity: Mapping[str, Any]

    def generate(self, notes: list[str], settings: GenerationSettings,
                 listener: Listener | None = None) -> list[Generation]: ...


def load_backend(spec: ModelSpec, http=None) -> Backend:
    """The backend a spec names: a model served over HTTP (`openai:MODEL@URL`, with `http`, an
    HTTPOptions) or a Hugging Face model in this process."""
    from harness.openai_backend import HTTPOptions, OpenAIBackend, ServedModel, is_served

    if not is_served(spec.base):
        if is_served(spec.adapter):
            raise AdapterError(f"{spec.adapter} is a served adapter; it needs a served base model "
                               "(--base-model openai:MODEL@URL)")
        return HFBackend(spec)
    base = ServedModel.parse(spec.base)
    if spec.adapter and not is_served(spec.adapter):
        raise AdapterError(f"a served base model takes a served adapter, --adapter openai:NAME (the name the "
                           f"server serves it under, e.g. vLLM's --lora-modules NAME=PATH), not {spec.adapter}")
    served = ServedModel.parse(spec.adapter, base.base_url) if spec.adapter else base
    return OpenAIBackend(served, http or HTTPOptions())


class FakeBackend:
    """A scripted backend: returns given outputs. A first-class backend for everything above the model."""

    def __init__(self, outputs: Mapping[str, str] | Callable[[str], str] | None = None, name: str = "fake",
                 pieces: int = 1):
        self.outputs = outputs if outputs is not None else {}
        self.name = name
        self.pieces = pieces  # a listener gets each output as this many growing prefixes, as decoding steps give it
        self.calls: list[list[str]] = []

    @property
    def identity(self) -> dict:
        """A script is part of the identity, so the cache never serves one script's outputs for another."""
        script = "callable" if callable(self.outputs) else sha256_text(json.dumps(self.outputs, sort_keys=True))
        return {"model": f"fake:{self.name}", "script": script}

    def script(self, note: str, output: str | dict) -> None:
        self.outputs[note] = output if isinstance(output, str) else dumps(output)

    def generate(self, notes, settings, listener=None):
        self.calls.append(list(notes))
        out = []
        for i, note in enumerate(notes):
            text = self.outputs(note) if callable(self.outputs) else self.outputs.get(note, dumps(empty_summary()))
            stopped = True
            for k in range(1, self.pieces + 1) if listener is not None else ():
                piece = text[:len(text) * k // self.pieces]
                if listener(i, piece) and k < self.pieces:
                    text, stopped = piece, False  # nobody reads the rest
                    break
            out.append(Generation(text=text, seconds=0.0, new_tokens=len(text.split()), stopped=stopped))
        return out


# --------------------------------------------------------------------------- resolving a base model


@dataclass(frozen=True)
class ResolvedBase:
    name: str  # canonical name, compared with an adapter's base_model_name_or_path
    folder: str  # what from_pretrained loads (a folder or a hub id)
    weights_sha256: str
    nf4_grid: bool = False  # written by `sunrise prepare-base`: NF4 and full precision are the same model


def resolve_base(base: str, cache_dir: Path | None = None) -> ResolvedBase:
    """Find a base model offline first; raise ModelNotFoundError saying what was tried."""
    cache_dir = cache_dir or cache_root()
    if base in (EMBEDDED, EMBEDDED_NAME):
        folder = converted_gguf(embedded_gguf(), cache_dir)
        return ResolvedBase(EMBEDDED_NAME, str(folder), _source_sha(folder, cache_dir))
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        folder = converted_gguf(path, cache_dir)
        return ResolvedBase(path.stem.split(".")[0], str(folder), _source_sha(folder, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but has no config.json; is it a Hugging Face model?")
        prepared = prepared_name(path)
        return ResolvedBase(prepared or path.name, str(path), folder_weights_sha256(path, cache_dir),
                            nf4_grid=prepared is not None)
    if not is_hub_id(base):
        raise ModelNotFoundError(f"model folder {path} does not exist")
    return _resolve_hub_id(base, cache_dir)


def is_hub_id(base: str) -> bool:
    """Whether `resolve_base` looks `base` up as a Hugging Face hub id: not the embedded model, a .gguf
    file, a folder here or a path."""
    path = Path(base).expanduser()
    return not (base in (EMBEDDED, EMBEDDED_NAME) or path.suffix == ".gguf" or path.is_dir() or path.is_absolute()
                or base.startswith((".", "~")) or base.count("/") > 1)


def _source_sha(folder: Path, cache_dir: Path) -> str:
    return json.loads((folder / "sunrise-source.json").read_text())["sha256"]


def _resolve_hub_id(model_id: str, cache_dir: Path) -> ResolvedBase:
    try:
        folder = hub_snapshot(model_id, ("*.json", "*.safetensors", "*.model", "*.txt"))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"{exc}. Download it where the hub is reachable (huggingface-cli download {model_id}) and pass its "
            f"folder with --base-model, or use the embedded default (--base-model embedded)"
        ) from None
    return ResolvedBase(model_id, folder, folder_weights_sha256(Path(folder), cache_dir))


def hub_snapshot(model_id: str, files: tuple[str, ...]) -> str:
    """A folder holding hub model `model_id`'s `files` (glob patterns): from the local Hugging Face cache,
    else from the hub unless HF_HUB_OFFLINE=1; ModelNotFoundError says where it looked."""
    from huggingface_hub import snapshot_download

    tried = [f"the local Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"]
    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: the hub next
        pass
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        tried.append("the Hugging Face hub")
        try:
            return snapshot_download(model_id, allow_patterns=list(files))
        except Exception as exc:  # noqa: BLE001 - unreachable, or no such model: said below
            tried[-1] += f" ({exc.__class__.__name__})"
    raise ModelNotFoundError(f"model {model_id!r} not found; tried {', '.join(tried)}")


# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_name: str
    sha256: str
    # The manifest `sunrise train` writes beside an adapter, read once here; {} for one trained elsewhere.
    manifest: dict = field(default_factory=dict, compare=False)

    @property
    def _hyperparameters(self) -> dict:
        return self.manifest.get("hyperparameters") or {}

    @property
    def split_note_spaces(self) -> bool:
        """Trained on notes cut at their spaces (harness.prompt.prompt_ids), so it must be read so."""
        return bool(self._hyperparameters.get("split_note_spaces"))

    @property
    def split_quotes(self) -> str:
        """How training tokenised the answers' quotes (train.trainer.encode_example): its loss is only
        comparable on answers tokenised so (the reference adapter's NF4 validation loss: 0.72 on 8 notes
        with BPE's own tokens, 0.068 on 50 as trained). Adapters from before `split_quotes` recorded
        `split_closers`; one without a manifest, BPE's own."""
        hyper = self._hyperparameters
        return hyper.get("split_quotes") or ("closers" if hyper.get("split_closers") else "none")


def inspect_adapter(adapter: str | Path) -> AdapterInfo:
    """Check a LoRA folder before anything loads it: safetensors only, readable config."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    config_path, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterError(f"{path} holds a pickled adapter_model.bin; pickles can run code when loaded, so "
                               "only safetensors adapters are accepted (re-save it with safe_serialization=True)")
        raise AdapterError(f"{path} has no adapter_model.safetensors; is it a peft LoRA adapter folder?")
    try:
        config = json.loads(config_path.read_text())
        base_name = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{config_path} is missing or unreadable ({exc.__class__.__name__}: {exc})") from None
    return AdapterInfo(path=path, base_name=str(base_name),
                       sha256=sha256_text(sha256_file(config_path) + sha256_file(weights)),
                       manifest=_read_manifest(path / "manifest.json"))


def _read_manifest(manifest: Path) -> dict:
    if not manifest.is_file():
        return {}
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{manifest} is unreadable ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("hyperparameters", {}), dict):
        raise AdapterError(f"{manifest} is unreadable (not a JSON object with an object of hyperparameters)")
    return record


def _same_base(adapter_base: str, loaded: ResolvedBase) -> bool:
    """Names match when their last path component matches, case folded ('org/Model' == '/x/Model')."""
    def norm(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].casefold()

    return norm(adapter_base) in (norm(loaded.name), norm(loaded.folder))


# --------------------------------------------------------------------------- the Hugging Face backend


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base_model(spec: ModelSpec, resolved: ResolvedBase, for_training: bool = False):
    """Load tokenizer and model per `spec`: float32/bf16/fp16, or NF4 4-bit through bitsandbytes."""
    if not for_training:
        # Generation asks MKL for shape-independent sums (harness.numerics); training keeps MKL's
        # fastest kernels (1.4x per step measured, benchmarks/training.py) and needs no invariance.
        pin_reproducible_blas()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelNotFoundError(f"loading a model needs torch and transformers ({exc}); pip install -e .") from exc
    # Under torchrun/accelerate each data-parallel process owns the GPU of its LOCAL_RANK.
    device = spec.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(spec.dtype)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    elif not for_training:  # generation: batch-invariant (training keeps the fused kernels)
        kwargs["attn_implementation"] = register_attention()
    if spec.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=_torch_dtype(spec.dtype),
            # The tied embedding/LM head stays unquantised: quantising it costs accuracy for little memory.
            llm_int8_skip_modules=["lm_head"],
        )
        kwargs["device_map"] = {"": device}
    tokenizer = AutoTokenizer.from_pretrained(resolved.folder)
    model = AutoModelForCausalLM.from_pretrained(resolved.folder, **kwargs)
    if spec.quantization != "nf4":
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.quantization == "nf4":
        _disable_bnb_cpu_packing(model)
    if not for_training:
        model.eval()
    return tokenizer, model


def _disable_bnb_cpu_packing(model) -> None:
    """bitsandbytes 0.50 repacks NF4 weights for its avx512-bf16 CPU kernel on the first eval-mode
    forward. Training must not let it: the weights are unpacked when state_dict() is taken (every
    checkpoint save) and are garbage after that (measured: validation loss 2.03 -> 19.3). Generation
    does not either: that kernel rounds the activations to bfloat16, so outputs would depend on
    whether the CPU has avx512_bf16 and differ from the arithmetic the adapter was trained on
    (harness.numerics.dequantise_once)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def check_adapter_base(info: AdapterInfo, resolved: ResolvedBase) -> None:
    """An adapter on the wrong base gives silent garbage: refuse it before loading anything."""
    if not _same_base(info.base_name, resolved):
        raise AdapterError(
            f"adapter {info.path} was trained on {info.base_name!r} but the base model is {resolved.name!r}; "
            "pass the matching --base-model"
        )


@contextmanager
def peft_quietly() -> Iterator[None]:
    """peft reads a property transformers 5 deprecated whenever it wraps a model (attaching an adapter,
    or making one to train): a FutureWarning a user can do nothing about, shown once per process."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attach_adapter(model, spec: ModelSpec, resolved: ResolvedBase, info: AdapterInfo):
    check_adapter_base(info, resolved)
    from peft import PeftModel

    try:
        with peft_quietly():
            model = PeftModel.from_pretrained(model, str(info.path), is_trainable=False)
    except Exception as exc:
        raise AdapterError(f"adapter {info.path} could not be attached to {resolved.name}: "
                           f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}") from None
    if spec.merge_adapter and spec.quantization != "nf4":  # nf4: folded once dequantised (HFBackend)
        model = model.merge_and_unload()
    model.eval()
    return model


SPLIT_NOTE = "split at spaces"  # the identity's note_tokens for an adapter trained so (harness.prompt.prompt_ids)


class HFBackend:
    """A Hugging Face causal LM (optionally with a LoRA adapter), greedy and batched."""

    def __init__(self, spec: ModelSpec = ModelSpec(), cache_dir: Path | None = None):
        t0 = time.perf_counter()
        self.spec = spec
        adapter = inspect_adapter(spec.adapter) if spec.adapter else None
        self.split_note_spaces = bool(adapter and adapter.split_note_spaces)
        self.resolved = resolve_base(spec.base, cache_dir)
        if adapter:
            check_adapter_base(adapter, self.resolved)
        self.tokenizer, model = load_base_model(spec, self.resolved)
        self.model = attach_adapter(model, spec, self.resolved, adapter) if adapter else model
        if spec.quantization == "nf4":
            dequantise_once(self.model)
            if adapter and spec.merge_adapter:
                try:
                    self.model = fold_adapter(self.model)
                except ValueError as exc:
                    if spec.merge_adapter is True:
                        raise AdapterError(f"adapter {adapter.path}: {exc}") from None
        # Merged (by peft or folded) leaves a plain model; "auto" may have kept the adapter attached.
        merged = adapter is not None and not hasattr(self.model, "peft_config")
        # Where MKL's sums depend on the shape, the batch-invariant numerics make the products invariant
        products = invariant_products(self.model) if spec.attn_implementation is None else None
        self._prepare({
            "model": self.resolved.name,
            "weights_sha256": self.resolved.weights_sha256,
            "adapter": str(adapter.path) if adapter else None,
            "adapter_sha256": adapter.sha256 if adapter else None,
            "quantization": spec.quantization,
            "dtype": spec.dtype,
            "merged": merged,
            "numerics": numerics(self.model, spec.attn_implementation),
            **({"nf4_kernel": nf4_kernel(self.model)} if spec.quantization == "nf4" else {}),
            **({"products": products} if products else {}),
            **({"base_grid": "nf4"} if self.resolved.nf4_grid else {}),
            **({"note_tokens": SPLIT_NOTE} if self.split_note_spaces else {}),
        })
        self.load_seconds = time.perf_counter() - t0

    @classmethod
    def from_model(cls, tokenizer, model, identity: Mapping[str, Any]) -> HFBackend:
        """A backend over a model already in memory (one built in a test, say); `identity` must name it
        exactly, since it keys the generation cache."""
        self = cls.__new__(cls)
        self.spec, self.resolved, self.tokenizer, self.model, self.load_seconds = None, None, tokenizer, model, 0.0
        self.split_note_spaces = identity.get("note_tokens") == SPLIT_NOTE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._prepare(dict(identity))
        return self

    def _prepare(self, identity: dict) -> None:
        """What generation needs besides the model: stop tokens, bounds, and the full identity."""
        self.tokenizer.padding_side = "left"
        self.stop_ids = sorted({i for i in (self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            self.tokenizer.eos_token_id) if isinstance(i, int) and i >= 0})
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.skeleton_tokens = len(self.tokenizer(dumps(empty_summary()))["input_ids"])
        self._template_tokens: dict[str, int] = {}
        self._constraint_tokenizer = None  # built on the first constrained batch (about a second)
        self._whitespace: frozenset[int] | None = None  # built on the first batch (a third of a second)
        self._free_decodes: OrderedDict[tuple[tuple[int, ...], int], tuple[list[int], bool]] = OrderedDict()
        self.constraint_stats = ConstraintStats()
        self.identity = {**identity, "answer_bound": list(ANSWER_BOUND), "decoder": DECODER, "loop": list(LOOP)}
        # Decoding drafts tokens where that cannot change them (harness.decoding, `greedy_decode`); not part
        # of the identity, as the batch's composition is not.
        self.lookahead = identity.get("numerics") == "batch-invariant"

    def max_new_tokens(self, prompt_tokens: int, settings: GenerationSettings) -> int:
        """Every value in a summary is copied from the note, so an answer needs at most the schema's
        skeleton plus the note's tokens again, and the per-entry keys around them (measured on the
        dataset: at most 2.5 answer tokens per note token beyond the skeleton). A looping model stops here."""
        return answer_bound(settings, self.skeleton_tokens, prompt_tokens - self.template_tokens(settings.prompt))

    def template_tokens(self, prompt: str) -> int:
        """The prompt's tokens around a note: its system message and the chat markup."""
        if prompt not in self._template_tokens:
            self._template_tokens[prompt] = len(self.encode([""], prompt)[0])
        return self._template_tokens[prompt]

    def encode(self, notes: list[str], prompt: str = "trained") -> list[list[int]]:
        return [prompt_ids(self.tokenizer, n, prompt, self.split_note_spaces) for n in notes]

    def read_prompt(self, ids: list[int]) -> tuple[str, Prompt] | None:
        """(note, prompt) whose `encode` is exactly `ids`, else None (ids out of the vocabulary too)."""
        if any(i >= len(self.tokenizer) for i in ids):
            return None
        return read_prompt_ids(self.tokenizer, ids, self.split_note_spaces)

    def token_limit(self, note: str, prompt_tokens: int, settings: GenerationSettings) -> int:
        return token_limit(self.max_new_tokens(prompt_tokens, settings), note, settings)

    def answer_limit(self, note: str, settings: GenerationSettings) -> int:
        """The most new tokens `note` gets under `settings` (a server caps a client's max_tokens by it)."""
        return self.token_limit(note, len(self.encode([note], settings.prompt)[0]), settings)

    def check_note(self, note: str, prompt_tokens: int, settings: GenerationSettings) -> None:
        if not note.strip():
            raise InputError("the note is empty")
        budget = prompt_tokens + self.token_limit(note, prompt_tokens, settings)
        if budget > self.context_length:
            raise InputError(f"the note is too long: {prompt_tokens} prompt tokens plus room for the answer "
                             f"exceed the model's context of {self.context_length} tokens")

    def batch_size(self, settings: GenerationSettings, longest: int) -> int:
        if settings.batch_size:
            return settings.batch_size
        # A token budget per batch; on 2 CPU cores 32 notes a batch ran 24 % faster than 22 and as fast as 64.
        return max(1, min(64, 16384 // max(1, longest)))

    def generate(self, notes: list[str], settings: GenerationSettings,
                 listener: Listener | None = None) -> list[Generation]:
        """Batched greedy generation. Notes are sorted by length so each batch pads little."""
        ids = self.encode(notes, settings.prompt)
        for note, row in zip(notes, ids, strict=True):
            self.check_note(note, len(row), settings)
        order = sorted(range(len(notes)), key=lambda i: -len(ids[i]))
        results: list[Generation | None] = [None] * len(notes)
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            size = self.batch_size(settings, longest + self.max_new_tokens(longest, settings))
            chunk = order[start:start + size]
            batch = self._generate_batch([notes[i] for i in chunk], [ids[i] for i in chunk], settings,
                                         listener and (lambda j, text, chunk=chunk: listener(chunk[j], text)))
            for i, gen in zip(chunk, batch, strict=True):
                results[i] = gen
            start += size
        return results  # type: ignore[return-value]

    def constraint_tokenizer(self) -> ConstraintTokenizer:
        if self._constraint_tokenizer is None:
            self._constraint_tokenizer = ConstraintTokenizer(self.tokenizer, self.stop_ids)
        return self._constraint_tokenizer

    def whitespace_tokens(self) -> frozenset[int]:
        if self._whitespace is None:
            self._whitespace = whitespace_tokens(self.tokenizer)
        return self._whitespace

    def _generate_batch(self, notes: list[str], rows: list[list[int]], settings: GenerationSettings,
                        listener: Listener | None = None) -> list[Generation]:
        t0 = time.perf_counter()
        bounds = [self.max_new_tokens(len(r), settings) for r in rows]
        limits = [self.token_limit(n, len(r), settings) for n, r in zip(notes, rows, strict=True)]
        todo, decoded, constraint, written, references = list(range(len(rows))), {}, None, None, []
        if settings.constrained:
            constraint = BatchConstraint.build(self.constraint_tokenizer(), settings.decoding, notes, bounds,
                                               self.constraint_stats)
            free = self._free_decodes_of(rows, bounds)
            if free:
                agreed = constraint.replay([tokens for tokens, _ in free], [stopped for _, stopped in free])
                decoded = {i: Decoded(free[i][0], True) for i, n in enumerate(agreed) if n is None}
                todo = [i for i in todo if i not in decoded]
                written, constraint = [free[i][0][:agreed[i]] for i in todo], constraint.rows(todo)
                references = [free[i][0] for i in todo]

        def on_tokens(r: int, tokens: list[int]) -> bool | None:
            return listener(todo[r], self.tokenizer.decode(tokens, skip_special_tokens=True))

        if todo:
            decoded.update(zip(todo, greedy_decode(self.model, [rows[i] for i in todo], [limits[i] for i in todo],
                                                   self.stop_ids, self.tokenizer.pad_token_id,
                                                   self.whitespace_tokens(), constraint, written,
                                                   lookahead=self.lookahead,
                                                   answers=[tokens for tokens, _ in islice(
                                                       reversed(self._free_decodes.values()), DRAFT_ANSWERS)],
                                                   references=references,
                                                   on_tokens=on_tokens if listener is not None else None),
                               strict=True))
        if not settings.constrained:
            self._keep_free_decodes(rows, bounds, decoded)
        seconds = (time.perf_counter() - t0) / len(rows)
        return [Generation(text=self.tokenizer.decode(d.tokens, skip_special_tokens=True), seconds=seconds,
                           new_tokens=len(d.tokens), stopped=d.stopped, prompt_tokens=len(row), looped=d.looped,
                           error=d.error or (f"the constrained answer did not close within {limit} new tokens"
                                             if settings.constrained and not d.stopped else None))
                for d, limit, row in zip((decoded[i] for i in range(len(rows))), limits, rows, strict=True)]

    def _keep_free_decodes(self, rows: list[list[int]], bounds: list[int], decoded: dict[int, Decoded]) -> None:
        for i, row in enumerate(rows):
            key = (tuple(row), bounds[i])
            self._free_decodes[key] = (decoded[i].tokens, decoded[i].stopped)
            self._free_decodes.move_to_end(key)
        while len(self._free_decodes) > FREE_DECODES_KEPT:
            self._free_decodes.popitem(last=False)

    def _free_decodes_of(self, rows: list[list[int]], bounds: list[int]) -> list[tuple[list[int], bool]] | None:
        """This backend's free decoding of each prompt under the same bound (none: no tokens), for a
        constrained decoding to replay as far as the grammar allows it (BatchConstraint.replay) and go
        on from there: where the free answer is allowed whole, the row costs no model call; elsewhere
        its prefill covers the agreed tokens at once. It gives the answers decoding from the prompt
        gives where a row's logits do not depend on the rows beside it, nor on whether its earlier
        tokens were prefilled or decoded one at a time: the batch-invariant numerics (harness.numerics),
        which the identity records. None without them, or where no prompt here was decoded freely."""
        if self.identity.get("numerics") != "batch-invariant":
            return None
        free = [self._free_decodes.get((tuple(row), bound), ([], False))
                for row, bound in zip(rows, bounds, strict=True)]
        return free if any(tokens for tokens, _ in free) else None
