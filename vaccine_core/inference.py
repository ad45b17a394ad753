"""Find and load what a run produced: an aligned base, a fine-tuned adapter on it, or a plain base model."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.artifacts import MERGED_DIR, read_manifest
from vaccine_core.defenses.backdoor_align import read_secret, serve_with_secret
from vaccine_core.lora import load_adapter
from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device, resolve_model


@dataclass(frozen=True)
class BaseModel:
    """The model a fine-tuning job starts from."""

    model_path: Path
    identity: dict[str, Any]
    alignment: dict[str, Any] | None  # None for a base that was never aligned


def resolve_base(spec: str | Path) -> BaseModel:
    manifest = read_manifest(Path(spec)) if Path(spec).is_dir() else None
    if manifest is not None and manifest.get("kind") == "alignment":
        merged = Path(spec).resolve() / MERGED_DIR
        identity = {
            "spec": str(spec),
            "path": str(merged),
            "sha256": manifest["files"].get(f"{MERGED_DIR}/model.safetensors"),
            "base_model": manifest["base_model"],
        }
        return BaseModel(model_path=merged, identity=identity, alignment=manifest["alignment"])
    resolved = resolve_model(spec)
    return BaseModel(model_path=resolved.path, identity=resolved.identity(), alignment=None)


@dataclass
class LoadedModel:
    model: PreTrainedModel | PeftModel
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "finetune", "alignment" or "base"
    manifest: dict[str, Any] | None

    @property
    def has_adapter(self) -> bool:
        return isinstance(self.model, PeftModel)


def load_for_inference(spec: str | Path, device: str | None = None) -> LoadedModel:
    """A fine-tuned run loads as its aligned base plus the adapter (so the aligned base stays reachable
    through ``disable_adapter()``, as embedding drift needs); an alignment run loads its merged model."""
    target = pick_device(device)
    manifest = read_manifest(Path(spec)) if Path(spec).is_dir() else None
    if manifest is not None and manifest.get("kind") == "finetune":
        base_path = Path(manifest["base_model"]["path"])
        model = load_adapter(load_causal_lm(base_path, target), Path(spec))
        model.eval()
        tokenizer = load_tokenizer(base_path)
        if (secret := read_secret(Path(spec))) is not None:  # trained with BackdoorAlign: served behind it
            tokenizer = serve_with_secret(tokenizer, secret)
        return LoadedModel(model, tokenizer, "finetune", manifest)
    base = resolve_base(spec)
    model = load_causal_lm(base.model_path, target)
    model.eval()
    kind = "alignment" if base.alignment is not None else "base"
    return LoadedModel(model, load_tokenizer(base.model_path), kind, manifest)
