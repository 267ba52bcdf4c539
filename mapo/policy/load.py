"""The :class:`Policy` bundle and loading of local checkpoints.

:func:`load_policy` loads any local Qwen2-VL, Qwen2.5-VL or Qwen3-VL directory
(``model_type`` in :data:`mapo.policy.families.SUPPORTED_MODEL_TYPES`; the model and
processor classes come from that registry) with an
image-only processor (:mod:`mapo.policy.processor`; no torchvision needed).
Nothing is ever downloaded: the path must be a local directory and loading runs
with ``local_files_only=True``.

A directory that lacks files fails early with a message naming them, rather
than deep inside transformers; a directory of another model type fails with the
list of supported types; a ``preprocessor_config.json`` whose patch/merge sizes
disagree with the model's vision config is refused (its images would be cut into
the wrong number of tokens and the tool's coordinate frame would be off).

LoRA (optional, via peft) targets the language model's attention and MLP
projections only; the vision tower stays frozen with the base weights. A
LoRA policy saves its adapter (``adapter_config.json``); :func:`load_policy` on
such a directory loads the base model named in it and applies the adapter.

A policy trained by mapo also records the agent protocol it was trained with
(tags, prompts: :class:`mapo.agent.protocol.ProtocolConfig`) in ``mapo_protocol.json``
next to its weights, so that RL and evaluation prompt it exactly as SFT did
(:func:`mapo.agent.protocol.protocol_for_policy`). Checkpoints from elsewhere have no
such file and use the configured protocol.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch

from mapo.core.config import from_dict, to_dict
from mapo.core.errors import MapoError, ModelError
from mapo.policy.families import FAMILIES, SUPPORTED_MODEL_TYPES, family_of
from mapo.policy.tokenizer import VISION_TOKENS
from mapo.agent.protocol import ProtocolConfig

PROTOCOL_FILE = "mapo_protocol.json"
QWEN_VL_MODEL_TYPES = SUPPORTED_MODEL_TYPES  # kept for callers of the old name
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class Policy:
    """A vision-language policy: model, processor and tokenizer that belong together.

    ``path`` is the directory it was loaded from (``None`` when built in memory).
    ``protocol`` is the agent protocol the policy was trained with (read from and
    written to ``mapo_protocol.json``; ``None`` for checkpoints that carry none).
    """

    model: Any
    processor: Any
    tokenizer: Any
    path: str | None = None
    protocol: ProtocolConfig | None = None

    def save(self, out_dir: str | Path) -> None:
        """Write a standard HF directory: safetensors weights (or LoRA adapter), processor, tokenizer."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is not None:  # preprocessor_config.json, as in Qwen's own checkpoints
            image_processor.save_pretrained(out)
        _use_standard_processor_class(out)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None and not (out / "generation_config.json").exists():
            generation.save_pretrained(out)
        if self.protocol is not None:
            vision = getattr(getattr(self.model, "config", None), "vision_config", None)
            write_protocol(out, self.protocol, vision=vision)
            write_system_template(out, self.protocol)

    @property
    def vision_token_ids(self) -> list[int]:
        """Ids the policy must never emit: markers and placeholders of image/video features."""
        return _existing_ids(self.tokenizer, VISION_TOKENS)

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end an assistant turn: ``<|im_end|>`` then ``<|endoftext|>`` (those that exist)."""
        return _existing_ids(self.tokenizer, ("<|im_end|>", "<|endoftext|>"))

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id (``<|endoftext|>`` for Qwen)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids[-1])


def _use_standard_processor_class(out: Path) -> None:
    """Name Qwen's processor class in ``processor_config.json`` so other tools (vLLM, plain
    ``AutoProcessor`` with torchvision) read the directory as a standard Qwen-VL checkpoint."""
    cfg_path = out / "processor_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    model_type = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model_type") if (
        out / "config.json"
    ).is_file() else None
    family = FAMILIES.get(model_type, FAMILIES["qwen2_5_vl"])
    if cfg.get("processor_class") == family.processor_cls().__name__:
        cfg["processor_class"] = family.standard_processor
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def write_protocol(out_dir: str | Path, protocol: ProtocolConfig, vision: Any = None) -> Path:
    """Record ``protocol`` in ``out_dir/mapo_protocol.json``; return the file's path.

    With ``vision`` (the model's vision config) the record also holds its ``patch_size`` and
    ``spatial_merge_size``, whose product is the pixels per image-token side that the zoom
    tool's view<->original mapping uses (:func:`read_patch_factor`; read by the verl agent loop).
    """
    record: dict[str, Any] = {"protocol": to_dict(protocol)}
    if vision is not None:
        record["vision"] = {"patch_size": int(vision.patch_size), "merge_size": int(vision.spatial_merge_size)}
    path = Path(out_dir) / PROTOCOL_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


SYSTEM_MARK = "{#- mapo: the system prompt this policy was trained with, used when a conversation has none #}"


def with_default_system(template: str, system: str) -> str:
    """``template`` that renders ``system`` as the system message of a conversation that has none.

    A preamble reassigns ``messages`` (Jinja top-level ``set``), so the template's own logic, Qwen2-VL's
    "You are a helpful assistant." default included, sees a conversation that opens with the system
    message; a conversation with its own system message is rendered unchanged. Applied once: a template
    that carries the preamble already has it replaced.
    """
    if template.startswith(SYSTEM_MARK):
        template = template.split("\n", 2)[2]  # the mark line and the preamble line of an earlier save
    literal = json.dumps(system)  # a Jinja string literal: JSON's escapes are Python's
    preamble = ("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', "
                f"'content': [{{'type': 'text', 'text': {literal}}}]}}] + messages %}}{{%- endif %}}")
    return f"{SYSTEM_MARK}\n{preamble}\n{template}"


def write_system_template(out_dir: str | Path, protocol: ProtocolConfig) -> None:
    """Put ``protocol``'s system prompt (the tool schema and tag grammar) into the chat template files of
    ``out_dir`` (``chat_template.jinja``, and ``tokenizer_config.json``'s copy), so plain transformers
    (``apply_chat_template`` without a system message) prompts the policy as mapo does."""
    from mapo.agent.protocol import system_prompt

    system = system_prompt(protocol)
    root = Path(out_dir)
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(with_default_system(jinja.read_text(encoding="utf-8"), system), encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        path = root / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data.get("chat_template"), str):
                data["chat_template"] = with_default_system(data["chat_template"], system)
                path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_patch_factor(root: str | Path) -> int | None:
    """``patch_size * merge_size`` recorded in ``root/mapo_protocol.json`` (None: no file or no record)."""
    path = Path(root) / PROTOCOL_FILE
    if not path.is_file():
        return None
    vision = json.loads(path.read_text(encoding="utf-8")).get("vision")
    if not isinstance(vision, dict):
        return None
    try:
        return int(vision["patch_size"]) * int(vision["merge_size"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: 'vision' must hold integer patch_size and merge_size, got {vision!r}") from None


def read_protocol(root: str | Path) -> ProtocolConfig | None:
    """The protocol recorded in ``root/mapo_protocol.json``, or ``None`` when there is no such file.

    Raises:
        ValueError: the file exists but is not valid JSON or names unknown/invalid fields.
    """
    path = Path(root) / PROTOCOL_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("protocol"), dict):
            raise ValueError('expected {"protocol": {...}}')
        return from_dict(ProtocolConfig, data["protocol"], prefix="protocol.")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a valid protocol record ({e}); fix or delete it") from None


def _existing_ids(tokenizer, tokens) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [int(vocab[t]) for t in tokens if t in vocab]


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    """LoRA on the language model's projections (peft). ``alpha / r`` scales the update."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one projection")


def missing_files(path: str | Path) -> list[str]:
    """Names of the files a loadable checkpoint directory lacks (empty if complete)."""
    root = Path(path)
    if (root / "adapter_config.json").is_file():
        return [] if any((root / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")) else [
            "adapter_model.safetensors"
        ]
    missing = [] if (root / "config.json").is_file() else ["config.json"]
    missing += _missing_weights(root)
    if not ((root / "tokenizer.json").is_file() or ((root / "vocab.json").is_file() and (root / "merges.txt").is_file())):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not ((root / "preprocessor_config.json").is_file() or _processor_config_has_image(root)):
        missing.append("preprocessor_config.json")
    if not _has_chat_template(root):
        missing.append("chat_template.jinja (or a chat_template in tokenizer_config.json / chat_template.json)")
    return missing


def _missing_weights(root: Path) -> list[str]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [s for s in shards if not (root / s).is_file()]
    if (root / "model.safetensors").is_file() or (root / "pytorch_model.bin").is_file():
        return []
    return ["model.safetensors (or model.safetensors.index.json with its shards)"]


def _processor_config_has_image(root: Path) -> bool:
    cfg = root / "processor_config.json"
    return cfg.is_file() and "image_processor" in json.loads(cfg.read_text(encoding="utf-8"))


def _has_chat_template(root: Path) -> bool:
    if (root / "chat_template.jinja").is_file() or (root / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        f = root / name
        if f.is_file() and json.loads(f.read_text(encoding="utf-8")).get("chat_template"):
            return True
    return False


def resolve_dtype(dtype: str, config_dtype: Any = None) -> torch.dtype:
    """``"auto"`` -> the checkpoint's own dtype (float32 if it names none); else the named dtype."""
    if dtype == "auto":
        if isinstance(config_dtype, torch.dtype):
            return config_dtype
        return _DTYPES.get(str(config_dtype).removeprefix("torch."), torch.float32)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def load_policy(
    path: str | Path,
    *,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    device: str | torch.device = "cpu",
    lora: LoraOptions | None = None,
    allow_partial: bool = False,
) -> Policy:
    """Load a local checkpoint directory (model + processor + tokenizer) as a :class:`Policy`.

    Loading is strict (:mod:`mapo.policy.checked_load`): a ``manifest.json`` in the directory
    is verified, the config's sizes are checked, and weights that lack a tensor the config
    asks for (or hold one it has no place for, or of the wrong shape) are refused with the
    tensors' names, as are a pickle-only ``pytorch_model.bin``, a damaged safetensors file,
    a tokenizer larger than the model's vocabulary and a chat template that cannot render.

    Args:
        path: a local directory written by ``save_pretrained`` (e.g. Qwen2.5-VL-7B-Instruct,
            or ``RUN_DIR/final`` of ``mapo sft``), or a LoRA adapter directory.
        dtype: ``auto`` keeps the checkpoint's dtype; ``float32``/``bfloat16``/``float16`` cast.
        device: where to put the model (``cpu``, ``cuda``, ``cuda:1`` …).
        lora: wrap the loaded model with fresh LoRA adapters (requires peft).
        allow_partial: research only: let tensors the weights lack be initialised at random
            (transformers' behaviour) instead of refusing the checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a directory, or lacks files (named in the message).
        ValueError: an unsupported model type (the message lists the supported ones), a
            processor whose patch/merge sizes disagree with the model, or an unknown ``dtype``;
            :class:`~mapo.core.errors.ModelError` (a ``ValueError``) for every check above.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root} (models are never downloaded)")
    from mapo.policy import checked_load

    checked_load.verify_manifest(root)
    try:
        missing = missing_files(root)
    except (ValueError, OSError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ModelError(f"checkpoint {root} has a damaged index or config file ({e})") from None
    if missing:
        raise FileNotFoundError(f"checkpoint {root} is missing: {', '.join(missing)}")
    if (root / "adapter_config.json").is_file():
        return _load_adapter(root, dtype=dtype, device=device)

    config = checked_load.read_config(root)
    checked_load.check_weight_files(root)
    model_type = config.get("model_type")
    family = family_of(model_type, f"checkpoint {root}")
    torch_dtype = resolve_dtype(dtype, config.get("dtype", config.get("torch_dtype")))
    try:
        with checked_load.quiet_transformers():
            processor = _load_processor(root, family.processor_cls())
    except MapoError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt tokenizer.json or processor file, whatever transformers raises
        raise ModelError(checked_load.load_failure(root, "tokenizer or processor", e)) from None
    checked_load.check_chat_template(processor.tokenizer, root)
    _check_pixel_budget(processor, root)
    _check_vocabulary(processor.tokenizer, config, root)
    model = checked_load.from_pretrained_strict(family.model_cls(), root, allow_partial=allow_partial, dtype=torch_dtype)
    if not allow_partial:  # every tensor came from these files: the eval fingerprint may hash them (cached)
        from mapo.core.fingerprint import mark_loaded_from

        mark_loaded_from(model, sorted(root.glob("*.safetensors")))
    from mapo.policy.processor import check_matches_model

    check_matches_model(processor, model.config.vision_config, f"checkpoint {root}")
    model = model.to(device)
    model.eval()
    policy = Policy(
        model=model, processor=processor, tokenizer=processor.tokenizer, path=str(root), protocol=read_protocol(root)
    )
    return apply_lora(policy, lora) if lora is not None else policy


def _check_pixel_budget(processor: Any, root: Path) -> None:
    """The image processor's ``size`` (min and max pixels) must be positive with min <= max: otherwise no
    image can be resized into it and every sample of an evaluation would be skipped."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    try:  # a dict or transformers' SizeDict
        lo, hi = size["shortest_edge"], size["longest_edge"]
    except (TypeError, KeyError):
        return
    if lo is None and hi is None:
        return
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (lo, hi)) or lo > hi:
        raise ModelError(f"the image processor of {root} (preprocessor_config.json) has size shortest_edge={lo!r}, "
                         f"longest_edge={hi!r} (min and max pixels): both must be positive, min <= max")


def _check_vocabulary(tokenizer: Any, config: dict[str, Any], root: Path) -> None:
    """A token id past the embedding would index outside it (an error on GPU, garbage on some backends).

    Checked from ``config.json`` before the model is built; the weights' own embedding is then
    checked against the config by the strict load."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    rows = text.get("vocab_size", config.get("vocab_size"))
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ModelError(f"the tokenizer of {root} has {len(tokenizer)} tokens but config.json's vocab_size is "
                         f"{rows}; the tokenizer and the weights must come from the same checkpoint")


def _load_processor(root: Path, cls: type):
    """The image-only processor ``cls`` of the checkpoint ``root`` (tokenizer, image processor, chat template)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(root, local_files_only=True)
    template = _read_chat_template(root) or tokenizer.chat_template
    if template is None:
        raise ValueError(f"the checkpoint {root} has no chat template; mapo needs one to render conversations")
    if tokenizer.chat_template is None:
        tokenizer.chat_template = template
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _read_chat_template(root: Path) -> str | None:
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    if (root / "chat_template.json").is_file():
        return json.loads((root / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def apply_lora(policy: Policy, lora: LoraOptions) -> Policy:
    """Wrap ``policy.model`` with LoRA adapters on the language model only."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is an optional dependency
        raise ImportError("LoRA needs peft: pip install -c constraints.txt 'mapo[lora]'") from e

    # A regex keeps the vision tower's projections (also named q/k/v in some models) out.
    names = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=rf".*language_model.*\.({names})",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(policy.model, config)
    return dataclasses.replace(policy, model=model)


def _load_adapter(root: Path, *, dtype: str, device: str | torch.device) -> Policy:
    from peft import PeftModel

    base_path = json.loads((root / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base_path or not Path(base_path).is_dir():
        raise FileNotFoundError(
            f"LoRA adapter {root} names base model {base_path!r}, which is not a local directory"
        )
    base = load_policy(base_path, dtype=dtype, device=device)
    model = PeftModel.from_pretrained(base.model, root, is_trainable=False)
    # The adapter's own record wins (it was trained last); else the base model's.
    return dataclasses.replace(base, model=model, path=str(root), protocol=read_protocol(root) or base.protocol)
