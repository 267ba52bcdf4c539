"""Loading a model directory strictly: every file checked before it is used, every tensor accounted for.

Used by :func:`mapo.policy.load_policy` and :func:`mapo.verifier.clip.load_verifier`. Each check
raises :class:`~mapo.core.errors.ModelError` naming the directory, the file and what to do:

- ``manifest.json`` beside the weights (a shipped checkpoint, or a copy of one) is verified
  whatever the path: every file it lists must match its sha256 and no other file may be there.
- ``config.json`` must be a JSON object whose sizes (``vocab_size``, ``hidden_size``,
  ``patch_size``, ``depth`` …) are positive integers within :data:`SIZE_BOUNDS`, so a hostile
  config cannot make the loader allocate without bound.
- Weights are safetensors: each file's header must fit in the file and parse; a checkpoint that
  holds only ``pytorch_model.bin`` (a pickle, which can run code when read) is refused.
- :func:`from_pretrained_strict`: a tensor the model needs but the weights lack (the config asks
  for more layers than were saved), a tensor the weights hold but the model has no place for, or
  one of the wrong shape, refuses the load with their names; ``allow_partial=True`` (research
  only) lets the missing ones be randomly initialised, as transformers would.
- Any other failure inside transformers (a corrupt ``tokenizer.json``, a chat template that does
  not compile or raises) becomes one line naming the directory.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from mapo.core.errors import ModelError, first_line

MANIFEST = "manifest.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# key -> the largest value any real checkpoint needs (the largest real vocabularies are ~262k tokens).
SIZE_BOUNDS = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024,
    "num_attention_heads": 1024, "num_key_value_heads": 1024, "max_position_embeddings": 1 << 24,
    "depth": 1024, "embed_dim": 1 << 16, "num_heads": 1024, "patch_size": 1024, "spatial_merge_size": 64,
    "temporal_patch_size": 64, "in_channels": 64, "out_hidden_size": 1 << 16, "projection_dim": 1 << 16,
    "image_size": 1 << 16, "num_channels": 64,
}
MAX_CONFIG_DEPTH = 8


def read_config(root: Path) -> dict[str, Any]:
    """``root/config.json`` as a dict, its sizes checked (:data:`SIZE_BOUNDS`)."""
    path = root / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ModelError(f"{path} is nested too deeply to be a model config") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({first_line(e)}); restore the checkpoint's config.json") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} must hold a JSON object, got a {type(config).__name__}; restore the checkpoint's "
                         "config.json")
    _check_sizes(config, path, "", 0)
    return config


def _check_sizes(node: dict[str, Any], path: Path, prefix: str, depth: int) -> None:
    if depth > MAX_CONFIG_DEPTH:
        raise ModelError(f"{path} is nested more than {MAX_CONFIG_DEPTH} levels deep; not a model config")
    for key, value in node.items():
        if isinstance(value, dict):
            _check_sizes(value, path, f"{prefix}{key}.", depth + 1)
        elif key in SIZE_BOUNDS and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= SIZE_BOUNDS[key]:
                raise ModelError(f"{path}: {prefix}{key} must be a positive integer of at most {SIZE_BOUNDS[key]}, "
                                 f"got {value!r}; the config does not describe a model that can be built")


def verify_manifest(root: Path) -> None:
    """Check ``root/manifest.json`` (when there is one) against the files in ``root``."""
    if not (root / MANIFEST).is_file():
        return
    from mapo.core import shipped

    try:
        shipped.verify(root, (), what="checkpoint", rebuild="restore the original files (or, if you changed them on "
                       f"purpose, delete {MANIFEST})", error=ModelError)
    except ModelError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"{root / MANIFEST} cannot be checked ({first_line(e)})") from None


def check_weight_files(root: Path, names: list[str] | None = None) -> None:
    """Refuse pickle-only weights and safetensors files whose header does not fit or does not parse."""
    files = sorted(root.glob("*.safetensors")) if names is None else [root / n for n in names]
    if not files and any(root.glob("*.bin")):
        raise ModelError(
            f"{root} holds its weights only as pytorch_model.bin, a Python pickle that can run code when it is "
            "read; mapo loads safetensors only. Convert it where you trust its origin (load it and "
            "save_pretrained(..., safe_serialization=True)) and point mapo at the result"
        )
    for f in files:
        _check_safetensors_header(f)


def _check_safetensors_header(path: Path) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModelError(f"{path} is empty or truncated ({size} bytes); restore it from the original checkpoint")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelError(f"{path} is damaged: its header claims {n} bytes, the file has {size}; restore it "
                                 "from the original checkpoint")
            header = json.loads(fh.read(n))
    except ModelError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path} is damaged: its header is not readable ({first_line(e)}); restore it") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is damaged: its header is not a JSON object; restore it")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2), default=0)
    if 8 + n + end > size:
        raise ModelError(f"{path} is truncated: its tensors need {8 + n + end} bytes, the file has {size}; restore it "
                         "from the original checkpoint")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report (a table of missing keys, warnings) would bury mapo's one-line error."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def from_pretrained_strict(model_cls: type, root: Path, *, allow_partial: bool = False, **kwargs: Any) -> Any:
    """``model_cls.from_pretrained(root, local_files_only=True, **kwargs)``, refusing partial loads.

    Raises:
        ModelError: the weights lack tensors the config asks for, hold ones the model has no
            place for, or hold ones of the wrong shape (names in the message; ``allow_partial``
            lets missing ones be initialised at random); or the load fails in any other way.
    """
    try:
        with quiet_transformers():
            # ignore_mismatched_sizes: a wrong-shaped tensor is reported in `info` (refused below, by name)
            # instead of a RuntimeError pointing at a table in the log.
            model, info = model_cls.from_pretrained(root, local_files_only=True, output_loading_info=True,
                                                    ignore_mismatched_sizes=True, **kwargs)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - anything transformers or safetensors raises on a bad directory
        raise ModelError(load_failure(root, "weights", e)) from None
    problems = []
    for kind, what in (("missing_keys", "lacks {n} tensor(s) the config asks for"),
                       ("unexpected_keys", "holds {n} tensor(s) the model has no place for"),
                       ("mismatched_keys", "holds {n} tensor(s) of the wrong shape")):
        keys = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(kind) or []))
        if keys and not (allow_partial and kind == "missing_keys"):
            shown = ", ".join(keys[:5]) + (f" … ({len(keys) - 5} more)" if len(keys) > 5 else "")
            problems.append(f"{what.format(n=len(keys))} ({shown})")
    if problems:
        raise ModelError(
            f"the weights in {root} do not match its config.json: they {'; they '.join(problems)}. The config and "
            "the weights must come from the same checkpoint; a partial load is allowed only with allow_partial=True "
            "(research)"
        )
    return model


def load_failure(root: Path, what: str, e: BaseException) -> str:
    """One line for a failure inside transformers while loading ``what`` (weights, tokenizer …) from ``root``."""
    import pickle

    text = first_line(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return (f"refusing to load {root}: its weights are a pickle holding Python objects other than tensors, "
                "which could run code when loaded; use a safetensors checkpoint from a source you trust")
    return f"cannot load the {what} of {root} ({type(e).__name__}: {text}); restore the checkpoint's files"


def check_chat_template(tokenizer: Any, root: Path) -> None:
    """Render a short conversation (text, then an image) with the checkpoint's chat template, so a template
    that does not compile or raises is refused at load, not in the middle of an evaluation."""
    messages = [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
    ]
    for m in messages:
        try:
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja2 raises its own types, and a template may raise anything
            raise ModelError(f"the chat template of {root} cannot render a conversation ({type(e).__name__}: "
                             f"{first_line(e)}); restore chat_template.jinja (or the chat_template entry)") from None
