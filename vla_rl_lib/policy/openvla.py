"""Load the real OpenVLA (``openvla/openvla-7b``) on transformers 5.24.

:func:`load_openvla` returns the model, its processor and everything a policy
adapter needs to read its actions (:class:`LoadedOpenVLA`);
:func:`build_openvla_policy` wraps that in :class:`OpenVLAPolicy`, the
generic ``HFVLAPolicy`` with OpenVLA's image preprocessing, prompt and
multimodal forward.

What this module decides, and why:

- **Remote code only from an allowlist.** OpenVLA's model class is Python code
  shipped with the weights (``trust_remote_code``). It runs only for ids or
  paths listed in the config's ``trust_remote_code``; anything else is refused
  before a single file of it is imported.
- **Local files only.** Nothing is downloaded here. A hub id is looked up in
  the local Hugging Face cache; if the weights are not there the error says
  how to fetch them on a machine with hub access.
- **Patched for transformers 5.** See :mod:`vla_rl_lib.policy.openvla_compat`.
- **CRANE-X7 has 8 action dimensions, OpenVLA was trained on 7.** OpenVLA's
  actions are 7-D end-effector deltas (xyz, roll/pitch/yaw, gripper);
  CRANE-X7's are 7 joint deltas and the gripper. OpenVLA's action tokenizer
  is per dimension (one token per dimension, decoded independently), so the
  model can emit 8 action tokens and they decode fine; but what a token
  *means* differs, so the pretrained model must be fine-tuned (SFT) on
  CRANE-X7 demonstrations before RL. ``action_dim`` (default 8) makes the
  choice explicit: OpenVLA's own statistics (7-D) are only used when their
  dimension matches it; otherwise the statistics come from the SFT data.
- **Autoregressive decoding only.** OpenVLA's forward builds its multimodal
  attention mask by concatenating a 2-D padding mask with the image-patch
  mask (``torch.cat([mask[:, :1], patch_mask, mask[:, 1:]], dim=1)``), so the
  4-D mask that parallel decoding needs cannot pass through it; OpenVLA was
  also trained to decode autoregressively.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.dynamic_module_utils import get_imports

from vla_rl_lib.policy.action_tokenizer import ActionStatistics, ActionTokenizer
from vla_rl_lib.policy.configuration import POLICY_CONFIG_FILE, PolicyConfig
from vla_rl_lib.policy.hf_policy import HFVLAPolicy, uint8_images
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.openvla_compat import (
    align_text_config_dtype,
    apply_openvla_patches,
    load_remote_class,
    patch_tokenization_utils_imports,
)

OPENVLA_7B = "openvla/openvla-7b"
# OpenVLA's training prompt (prismatic/models/backbones/llm/prompting, "openvla" style).
OPENVLA_PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# Llama's "▁" token. In training the action tokens followed it (the prompt is "Out: " + actions);
# OpenVLA's predict_action appends it when the tokenized prompt does not end with it.
OPENVLA_PROMPT_SUFFIX_TOKEN_ID = 29871
CRANE_X7_ACTION_DIM = 8
# Auto-class names under which OpenVLA-style config.json files map the model class.
MODEL_AUTO_MAP_KEYS = ("AutoModelForVision2Seq", "AutoModelForImageTextToText")
PROCESSOR_CONFIG_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Packages OpenVLA's remote code imports that `pip install -e .[openvla]` provides.
OPENVLA_EXTRA_PACKAGES = frozenset({"timm", "torchvision", "accelerate"})
INSTALL_HINT = "pip install -e '.[openvla]'"


@dataclass
class LoadedOpenVLA:
    """OpenVLA's model and processor, plus how to read its actions.

    ``prompt_template`` is formatted with ``instruction=``. After tokenizing it
    (the processor adds BOS), append ``prompt_suffix_token_ids`` unless the
    prompt already ends with them: the action tokens follow those in training.
    When calling the model's own forward: it inserts the image patches right
    after position 0, which must be BOS (pad on the right, never on the
    left), and it decodes cached steps for one sample at a time (batch size
    1). :class:`OpenVLAPolicy` lifts both limits with its own batched forward.

    ``statistics`` is None when the checkpoint has no statistics with
    ``action_dim`` dimensions (the base OpenVLA has only 7-D ones; CRANE-X7 is
    8-D): take them from the SFT demonstrations then.
    """

    model: torch.nn.Module
    processor: Any
    action_tokenizer: ActionTokenizer
    statistics: ActionStatistics | None
    unnorm_key: str | None
    action_dim: int
    prompt_template: str
    prompt_suffix_token_ids: tuple[int, ...]
    checkpoint_dir: Path
    name_or_path: str

    @property
    def action_token_ids(self) -> range:
        """The vocabulary ids of the action bins (OpenVLA: 31744..31999)."""
        return range(self.action_tokenizer.action_token_begin, self.action_tokenizer.vocab_end)


def _local_snapshot(name: str) -> str | None:
    """The local cache folder of hub id ``name``, or None (not a hub id, or not downloaded)."""
    if os.path.exists(name) or name.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        return None


def _same_location(a: str, b: str) -> bool:
    """Same id, or the same folder (a hub id stands for its local cache snapshot)."""
    if a == b:
        return True
    a_path, b_path = _local_snapshot(a) or a, _local_snapshot(b) or b
    if os.path.exists(a_path) and os.path.exists(b_path):
        return os.path.samefile(a_path, b_path)
    return False


def check_trust_remote_code(
    name_or_path: str | os.PathLike, allowlist: tuple[str, ...] | list[str]
) -> None:
    """Raise unless ``name_or_path`` (hub id or local path) is on the remote-code allowlist."""
    name = str(name_or_path)
    if any(_same_location(name, str(allowed)) for allowed in allowlist):
        return
    suggestion = [*map(str, allowlist), name]
    raise PermissionError(
        f"Loading {name!r} runs the Python code shipped with it (trust_remote_code), and it is not on the "
        f"allowlist {list(map(str, allowlist))}. If you trust that code (read its modeling_*.py and "
        f"processing_*.py first), add it to the config: trust_remote_code: {json.dumps(suggestion)}"
    )


def _missing_weights_error(name: str, detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"OpenVLA weights for {name!r} are not available offline ({detail}). Nothing is downloaded here. "
        f"On a machine with Hugging Face hub access run `huggingface-cli download {OPENVLA_7B} "
        f"--local-dir /path/to/openvla-7b` (about 15 GB; `hf download` in newer huggingface_hub), copy the "
        "folder here, then set `pretrained_checkpoint: /path/to/openvla-7b` and add that path to "
        "`trust_remote_code` in the config."
    )


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory holding the checkpoint: the path itself, or the hub id's local cache snapshot."""
    name = str(name_or_path)
    if os.path.isdir(name):
        directory = Path(name)
    elif os.path.exists(name):
        raise NotADirectoryError(
            f"{name!r} is a file; pretrained_checkpoint must be a checkpoint directory or hub id."
        )
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            directory = Path(snapshot_download(name, local_files_only=True))
        except LocalEntryNotFoundError as error:
            raise _missing_weights_error(name, "not in the local Hugging Face cache") from error
    if not (directory / "config.json").is_file():
        raise _not_openvla_error(directory, "config.json")
    if not any((directory / file).is_file() for file in WEIGHT_FILES):
        raise _not_openvla_error(directory, " / ".join(WEIGHT_FILES))
    return directory


def _not_openvla_error(directory: Path, missing: str) -> FileNotFoundError:
    present = sorted(p.name for p in directory.iterdir())
    return FileNotFoundError(
        f"{directory} is not an OpenVLA checkpoint folder: {missing} is missing (it holds "
        f"{present[:8]}{'...' if len(present) > 8 else ''}). pretrained_checkpoint must be a copy of "
        f"{OPENVLA_7B} (`huggingface-cli download {OPENVLA_7B} --local-dir DIR`) or a model saved in its format."
    )


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_class_reference(checkpoint_dir: Path) -> str:
    """``module.Class`` of the model, from config.json's ``auto_map``."""
    auto_map = _read_json(checkpoint_dir / "config.json").get("auto_map", {})
    for key in MODEL_AUTO_MAP_KEYS:
        if key in auto_map:
            return auto_map[key]
    raise ValueError(
        f"{checkpoint_dir / 'config.json'} has no auto_map entry {list(MODEL_AUTO_MAP_KEYS)} (found "
        f"{sorted(auto_map)}); this is not an OpenVLA checkpoint with its remote code."
    )


def processor_class_reference(checkpoint_dir: Path) -> str:
    """``module.Class`` of the processor, from the first processor/tokenizer config naming one.

    OpenVLA's own files map it at the top level; a processor re-saved by
    transformers 5 keeps the map only inside its ``image_processor`` entry.
    """
    for file in PROCESSOR_CONFIG_FILES:
        path = checkpoint_dir / file
        if not path.is_file():
            continue
        content = _read_json(path)
        for section in (content, *(v for v in content.values() if isinstance(v, dict))):
            reference = section.get("auto_map", {}).get("AutoProcessor")
            if reference:
                return reference
    raise ValueError(
        f"none of {list(PROCESSOR_CONFIG_FILES)} in {checkpoint_dir} maps an AutoProcessor class; "
        "the checkpoint is missing OpenVLA's processor files (processing_prismatic.py and its configs)."
    )


def check_remote_code_dependencies(checkpoint_dir: Path, class_references: list[str]) -> None:
    """Fail early, with an install hint, when the remote code imports a package that is missing or broken.

    transformers would otherwise say "Run `pip install timm`", which installs a timm
    OpenVLA rejects (it needs 0.9.x); the project's ``openvla`` extra pins the right one.
    """
    for reference in class_references:
        module_file = checkpoint_dir / (reference.split("--")[-1].split(".")[0] + ".py")
        if not module_file.is_file():
            raise FileNotFoundError(
                f"{module_file} is missing; the checkpoint's remote code is incomplete."
            )
        for package in get_imports(module_file):
            if importlib.util.find_spec(package) is None:
                hint = (
                    INSTALL_HINT if package in OPENVLA_EXTRA_PACKAGES else f"pip install {package}"
                )
                raise ImportError(
                    f"OpenVLA's {module_file.name} imports {package!r}, which is not installed. Install the "
                    f"optional OpenVLA dependencies: {hint}"
                )
            try:
                importlib.import_module(package)
            except (
                Exception
            ) as error:  # a broken install raises anything from OSError to RuntimeError
                raise ImportError(
                    f"OpenVLA's {module_file.name} imports {package!r}, which is installed but fails to import "
                    f"({type(error).__name__}: {error}). timm 0.9 imports torchvision, whose build must match "
                    f"your torch ({torch.__version__}); reinstall with {INSTALL_HINT} and a matching torchvision."
                ) from error


def select_action_statistics(
    norm_stats: dict[str, Any] | None,
    unnorm_key: str | None,
    action_dim: int,
    source: str = "norm_stats",
) -> tuple[str | None, ActionStatistics | None]:
    """Pick one dataset's action statistics from OpenVLA's ``norm_stats``.

    ``norm_stats`` is ``{dataset: {"action": {"q01", "q99", "mask", ...}}}``.
    With ``unnorm_key`` given it must exist and have ``action_dim`` dimensions.
    Without it, the single entry with ``action_dim`` dimensions is taken;
    several are an error (choose one); none gives ``(None, None)``: the
    statistics must then come from the fine-tuning data.
    """
    norm_stats = norm_stats or {}
    dims = {}
    for key, entry in norm_stats.items():
        action = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(action, dict) or not {"q01", "q99"} <= action.keys():
            raise ValueError(
                f"{source}[{key!r}] has no 'action' entry with 'q01' and 'q99'; expected OpenVLA's layout "
                "{dataset: {'action': {'q01': [...], 'q99': [...], 'mask': [...]}}}."
            )
        dims[key] = len(action["q01"])
    if unnorm_key is not None:
        if unnorm_key not in norm_stats:
            raise KeyError(
                f"unnorm_key {unnorm_key!r} is not in {source}; choose one of {sorted(norm_stats)} "
                "(config: model.unnorm_key), or leave it null when the statistics come from SFT data."
            )
        if dims[unnorm_key] != action_dim:
            raise ValueError(
                f"{source}[{unnorm_key!r}] describes {dims[unnorm_key]}-D actions but action_dim={action_dim}. "
                "OpenVLA's own statistics are for 7-D end-effector actions; CRANE-X7 uses 8-D joint actions, "
                "so fine-tune (SFT) on CRANE-X7 demonstrations and use the statistics that SFT writes "
                "(set model.unnorm_key: null)."
            )
        chosen = unnorm_key
    else:
        matching = sorted(key for key, dim in dims.items() if dim == action_dim)
        if not matching:
            return None, None
        if len(matching) > 1:
            raise ValueError(
                f"{source} holds {action_dim}-D action statistics for {len(matching)} datasets {matching}; "
                "set model.unnorm_key to the one whose actions the policy should produce."
            )
        chosen = matching[0]
    action = norm_stats[chosen]["action"]
    statistics = ActionStatistics(
        q01=action["q01"],
        q99=action["q99"],
        mask=action.get("mask", [True] * dims[chosen]),
        mean=action.get("mean"),
        std=action.get("std"),
        min=action.get("min"),
        max=action.get("max"),
    )
    return chosen, statistics


def check_openvla_checkpoint(
    name_or_path: str | os.PathLike, trust_remote_code_allowlist: tuple[str, ...] | list[str]
) -> Path:
    """What ``load_openvla`` checks before running any of the checkpoint's code; returns its folder.

    The allowlist, the files (config.json, weights, the remote code its
    ``auto_map`` names, processor configs) and the packages that code
    imports. Cheap: call it before collecting demonstrations.
    """
    check_trust_remote_code(name_or_path, trust_remote_code_allowlist)
    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    references = [model_class_reference(checkpoint_dir), processor_class_reference(checkpoint_dir)]
    check_remote_code_dependencies(checkpoint_dir, references)
    return checkpoint_dir


def checkpoint_action_statistics(
    checkpoint_dir: Path, unnorm_key: str | None, action_dim: int
) -> tuple[str | None, ActionStatistics | None]:
    """The checkpoint's own ``action_dim``-D statistics from config.json, without loading the model.

    ``(None, None)`` when it has none to act with: no entry of that
    dimension, or ``unnorm_key`` names a dataset it does not hold yet (the
    key SFT on the robot's demonstrations will write).
    """
    norm_stats = _read_json(checkpoint_dir / "config.json").get("norm_stats") or {}
    if unnorm_key is not None and unnorm_key not in norm_stats:
        return None, None
    return select_action_statistics(
        norm_stats, unnorm_key, action_dim, source=f"{checkpoint_dir / 'config.json'} norm_stats"
    )


def names_openvla(name_or_path: str) -> bool:
    """Whether a checkpoint reference is OpenVLA: a hub id under ``openvla/`` or a folder of that model type."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return _read_json(config).get("model_type") == "openvla"
    return not os.path.exists(name_or_path) and name_or_path.lower().startswith("openvla/")


def allowlist_with_saved_policy(
    policy_dir: str | os.PathLike, allowlist: tuple[str, ...] | list[str]
) -> tuple[str, ...]:
    """``allowlist``, plus ``policy_dir`` when the code it carries is an exact copy of its base's.

    A policy saved from OpenVLA (an SFT result, a merged or resumed run) keeps
    a copy of ``processing_prismatic.py`` beside its processor files. When its
    base (``policy_config.json``'s ``base_model``) is allowlisted and every
    ``*.py`` in the folder is byte-identical to the base's file of that name,
    no new code would run, so the folder is trusted like its base. Anything
    else must be allowlisted by hand (``check_trust_remote_code`` says how).
    """
    policy_dir = Path(policy_dir)
    allow = tuple(map(str, allowlist))
    config_file = policy_dir / POLICY_CONFIG_FILE
    base = _read_json(config_file).get("base_model") if config_file.is_file() else None
    if not base:
        return allow
    base_dir = Path(base) if Path(base).is_absolute() else policy_dir / base
    if not any(_same_location(str(base_dir), allowed) for allowed in allow):
        return allow
    code = sorted(policy_dir.glob("*.py"))
    copies = all(
        (base_dir / file.name).is_file() and (base_dir / file.name).read_bytes() == file.read_bytes()
        for file in code
    )
    return (*allow, str(policy_dir)) if code and copies else allow


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_openvla(
    name_or_path: str | os.PathLike = OPENVLA_7B,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    trust_remote_code_allowlist: tuple[str, ...] | list[str] = (OPENVLA_7B,),
    unnorm_key: str | None = None,
    action_dim: int = CRANE_X7_ACTION_DIM,
    attn_implementation: str | None = None,
) -> LoadedOpenVLA:
    """Load OpenVLA (or a fine-tuned copy in its format) from local files, patched for transformers 5.

    ``name_or_path`` is a hub id found in the local Hugging Face cache or a
    checkpoint directory; either must be on ``trust_remote_code_allowlist``.
    ``device`` defaults to CUDA when available. ``action_dim`` is the number
    of action tokens per step (8 for CRANE-X7; OpenVLA itself emits 7).
    """
    if action_dim < 1:
        raise ValueError(f"action_dim must be >= 1, got {action_dim}")
    name = str(name_or_path)
    checkpoint_dir = check_openvla_checkpoint(name, trust_remote_code_allowlist)
    model_cls = load_remote_class(model_class_reference(checkpoint_dir), checkpoint_dir)
    apply_openvla_patches(model_cls)
    config = model_cls.config_class.from_pretrained(checkpoint_dir, local_files_only=True)
    align_text_config_dtype(config, dtype)
    target = torch.device(device) if device is not None else _default_device()
    load_kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "local_files_only": True}
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    model = model_cls.from_pretrained(checkpoint_dir, **load_kwargs)
    model.to(target)
    model.eval()

    processor = _load_processor(checkpoint_dir, processor_class_reference(checkpoint_dir))

    # OpenVLA pads its embedding matrix to a multiple of 64; its action ids end at the unpadded size.
    vocab_end = config.text_config.vocab_size - config.pad_to_multiple_of
    action_tokenizer = ActionTokenizer(vocab_end=vocab_end, n_bins=config.n_action_bins)
    chosen_key, statistics = select_action_statistics(
        getattr(config, "norm_stats", None),
        unnorm_key,
        action_dim,
        source=f"{name} config.json norm_stats",
    )
    return LoadedOpenVLA(
        model=model,
        processor=processor,
        action_tokenizer=action_tokenizer,
        statistics=statistics,
        unnorm_key=chosen_key,
        action_dim=action_dim,
        prompt_template=OPENVLA_PROMPT_TEMPLATE,
        prompt_suffix_token_ids=(OPENVLA_PROMPT_SUFFIX_TOKEN_ID,),
        checkpoint_dir=checkpoint_dir,
        name_or_path=name,
    )


def _load_processor(directory: Path, reference: str) -> Any:
    patch_tokenization_utils_imports()
    processor_cls = load_remote_class(reference, directory)
    return processor_cls.from_pretrained(directory, trust_remote_code=True, local_files_only=True)


def load_openvla_processor(
    directory: str | os.PathLike,
    trust_remote_code_allowlist: tuple[str, ...] | list[str] = (OPENVLA_7B,),
) -> Any:
    """OpenVLA's processor alone, from a checkpoint or a saved policy directory (allowlisted)."""
    check_trust_remote_code(directory, trust_remote_code_allowlist)
    directory = Path(directory)
    reference = processor_class_reference(directory)
    check_remote_code_dependencies(directory, [reference])
    return _load_processor(directory, reference)


def openvla_model_loader(
    trust_remote_code_allowlist: tuple[str, ...] | list[str] = (OPENVLA_7B,),
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
) -> Callable[[str], tuple[torch.nn.Module | None, Any]]:
    """A ``model_loader`` for ``OpenVLAPolicy.from_checkpoint``: directory -> (model, processor).

    ``from_checkpoint`` also calls it on the saved policy directory just to
    read the processor; that directory holds no model weights, so then only
    the processor is loaded and the model is None. Saved policy directories
    carry a copy of ``processing_prismatic.py``, so they must be allowlisted
    like the base checkpoint.
    """

    def load(directory: str) -> tuple[torch.nn.Module | None, Any]:
        if not (Path(directory) / "config.json").is_file():
            return None, load_openvla_processor(directory, trust_remote_code_allowlist)
        loaded = load_openvla(
            directory,
            dtype=dtype,
            device=device,
            trust_remote_code_allowlist=trust_remote_code_allowlist,
        )
        return loaded.model, loaded.processor

    return load


class OpenVLAPolicy(HFVLAPolicy):
    """``HFVLAPolicy`` for OpenVLA's Prismatic architecture.

    OpenVLA's own forward decodes cached steps for one sample only (it asserts
    batch size 1), so the three model-facing hooks are reimplemented from its
    multimodal branch, batched: the vision backbone's patch features go
    through the projector and are inserted right after each row's BOS token;
    the sequence then runs through the Llama decoder (``language_model.model``)
    with the policy's mask, positions and KV cache. Prompts are left-padded,
    so each row's BOS sits after its padding; hidden states are returned in
    text positions (patch positions dropped) so the base class indexes them as
    it would a text-only sequence. ``tests/test_openvla_loading.py`` checks
    that greedy ``act`` matches ``model.generate`` through OpenVLA's forward.
    """

    prompt_suffix_token_ids: tuple[int, ...] = (OPENVLA_PROMPT_SUFFIX_TOKEN_ID,)
    # Image patches the last prefill inserted; cached steps shift their positions by it.
    _num_image_patches: int | None = None

    def preprocess_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> OpenVLA pixel values (B, 3 * n_backbones, h, w), in torch.

        Mirrors ``PrismaticImageProcessor``: per vision backbone, resize
        (bicubic, antialiased, rounded to uint8 as PIL does), scale to [0, 1],
        normalize with that backbone's mean/std; stack the results on channels
        (OpenVLA-7B fuses DINOv2 and SigLIP: 6 channels).
        """
        pixels = uint8_images(images)
        image_processor = self.processor.image_processor
        strategy = image_processor.image_resize_strategy
        x = pixels.to(self.device).permute(0, 3, 1, 2).float()
        if strategy == "letterbox" and x.shape[-1] != x.shape[-2]:
            x = _letterbox(x, [round(255 * m) for m in image_processor.means[0]])
        elif strategy not in ("letterbox", "resize-naive"):
            raise ValueError(
                f"image_resize_strategy {strategy!r} is not implemented here (OpenVLA-7B uses resize-naive); "
                "supported: resize-naive, letterbox."
            )
        stacked = []
        for size, mean, std in zip(
            image_processor.input_sizes, image_processor.means, image_processor.stds, strict=True
        ):
            height, width = int(size[-2]), int(size[-1])
            y = x
            if y.shape[-2:] != (height, width):
                y = F.interpolate(
                    y, size=(height, width), mode="bicubic", antialias=True, align_corners=False
                )
                y = y.round().clamp(0, 255)
            mean_t = torch.tensor(mean, device=y.device).view(1, -1, 1, 1)
            std_t = torch.tensor(std, device=y.device).view(1, -1, 1, 1)
            stacked.append((y / 255.0 - mean_t) / std_t)
        return torch.cat(stacked, dim=1).to(self._hf_model().dtype)

    def _encode_prompt_ids(self, instruction: str) -> list[int]:
        """BOS + the prompt + Llama's "▁" (the token the action tokens followed in training), cached."""
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            tokenizer = self.processor.tokenizer
            ids = list(tokenizer(self.prompt_template.format(instruction=instruction))["input_ids"])
            if not ids or ids[0] != tokenizer.bos_token_id:
                raise ValueError(
                    f"the tokenizer did not start the prompt with BOS ({tokenizer.bos_token_id}); OpenVLA "
                    f"inserts the image right after BOS. Got ids {ids[:5]}..."
                )
            suffix = list(self.prompt_suffix_token_ids)
            if ids[-len(suffix) :] != suffix:
                ids += suffix
            self._prompt_cache[instruction] = ids
        return ids

    def _decoder_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        vla = self._hf_model()
        decoder = vla.language_model.model
        if attention_mask.ndim != 2:
            raise ValueError("OpenVLA takes 2-D padding masks only (autoregressive decoding).")
        text_embeddings = vla.get_input_embeddings()(input_ids)
        valid = attention_mask.bool()
        if pixel_values is None:
            # A cached step: the cache already holds padding, BOS, the image patches and the prompt.
            if cache is None or self._num_image_patches is None:
                raise ValueError("a step without pixel_values must continue a cached prompt")
            patches = self._num_image_patches
            ones = valid.new_ones((valid.shape[0], patches))
            outputs = decoder(
                inputs_embeds=text_embeddings,
                attention_mask=torch.cat([valid, ones], dim=1).long(),
                position_ids=position_ids + patches,
                cache=cache,
                use_cache=True,
            )
            return outputs.last_hidden_state

        patch_embeddings = vla.projector(vla.vision_backbone(pixel_values)).to(
            text_embeddings.dtype
        )
        batch, length = input_ids.shape
        patches = patch_embeddings.shape[1]
        self._num_image_patches = patches
        # Row i: [padding, BOS, patches, rest of the prompt]; BOS is the first valid position.
        bos = valid.long().argmax(dim=1, keepdim=True)
        slots = torch.arange(length + patches, device=input_ids.device).unsqueeze(0)
        source = torch.where(
            slots <= bos,
            slots,
            torch.where(slots <= bos + patches, length + slots - bos - 1, slots - patches),
        )
        combined = torch.cat([text_embeddings, patch_embeddings], dim=1)
        embeddings = combined.gather(1, source.unsqueeze(-1).expand(-1, -1, combined.shape[-1]))
        mask = torch.cat([valid, valid.new_ones((batch, patches))], dim=1).gather(1, source)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        outputs = decoder(
            inputs_embeds=embeddings,
            attention_mask=mask.long(),
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        )
        # Back to text positions: text position t sits at t (up to BOS) or t + patches.
        text_slots = torch.arange(length, device=input_ids.device).unsqueeze(0)
        back = torch.where(text_slots <= bos, text_slots, text_slots + patches)
        hidden = outputs.last_hidden_state
        return hidden.gather(1, back.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _letterbox(x: torch.Tensor, fill: list[int]) -> torch.Tensor:
    """Pad (B, 3, H, W) to a square with a symmetric border of ``fill`` (PrismaticImageProcessor's letterbox)."""
    height, width = x.shape[-2:]
    side = max(height, width)
    horizontal, vertical = (side - width) // 2, (side - height) // 2
    out = (
        torch.tensor(fill, dtype=x.dtype, device=x.device)
        .view(1, 3, 1, 1)
        .expand(x.shape[0], 3, side, side)
    )
    out = out.clone()
    out[..., vertical : vertical + height, horizontal : horizontal + width] = x
    return out


def build_openvla_policy(
    source: LoadedOpenVLA | str | os.PathLike,
    decoding: str = "autoregressive",
    statistics: ActionStatistics | None = None,
    unnorm_key: str | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    trust_remote_code_allowlist: tuple[str, ...] | list[str] = (OPENVLA_7B,),
    action_dim: int = CRANE_X7_ACTION_DIM,
    lora: LoRAConfig | None = None,
    seed: int = 0,
) -> OpenVLAPolicy:
    """Wrap OpenVLA in :class:`OpenVLAPolicy` (an ``HFVLAPolicy``).

    ``source`` is a :class:`LoadedOpenVLA`, or a hub id / directory that is
    first loaded with :func:`load_openvla` (``dtype``, ``device``,
    ``trust_remote_code_allowlist``, ``action_dim`` and ``unnorm_key`` apply to
    that load). ``statistics`` (with the ``unnorm_key`` naming their dataset)
    override the checkpoint's; they are required when it has none for
    ``action_dim``, e.g. base OpenVLA on CRANE-X7: pass the statistics of the
    SFT demonstrations. ``lora`` (None: every weight trains) and ``seed`` go to
    ``HFVLAPolicy``. LoRA checkpoints reference the base weights instead of
    copying them (``PolicyConfig.base_model`` is the loaded directory).
    """
    if decoding != "autoregressive":
        raise ValueError(
            f"decoding={decoding!r} is not supported for OpenVLA: parallel decoding needs a 4-D attention "
            "mask, and OpenVLA's forward concatenates the attention mask with a 2-D image-patch mask, so "
            "only 2-D padding masks pass through it (and OpenVLA was trained autoregressively). "
            "Set model.decoding: autoregressive in the config."
        )
    if isinstance(source, LoadedOpenVLA):
        loaded = source
    else:
        loaded = load_openvla(
            source,
            dtype=dtype,
            device=device,
            trust_remote_code_allowlist=trust_remote_code_allowlist,
            unnorm_key=None if statistics is not None else unnorm_key,
            action_dim=action_dim,
        )
    if statistics is None:
        statistics, unnorm_key = loaded.statistics, loaded.unnorm_key
    if statistics is None:
        raise ValueError(
            f"{loaded.name_or_path} has no {loaded.action_dim}-D action statistics (its norm_stats are for "
            "OpenVLA's 7-D end-effector actions). CRANE-X7 needs SFT on CRANE-X7 demonstrations first; pass "
            "the statistics computed from them: build_openvla_policy(loaded, "
            "statistics=ActionStatistics.from_actions(demo_actions), unnorm_key='crane_x7')."
        )
    if statistics.action_dim != loaded.action_dim:
        raise ValueError(
            f"statistics describe {statistics.action_dim}-D actions but the policy emits "
            f"{loaded.action_dim} action tokens per step (action_dim); they must agree."
        )
    config = PolicyConfig(
        action_dim=loaded.action_dim,
        decoding=decoding,
        prompt_template=loaded.prompt_template,
        unnorm_key=unnorm_key,
        lora=lora or LoRAConfig(),
        action_token_end=loaded.action_tokenizer.vocab_end,
        n_action_bins=loaded.action_tokenizer.n_bins,
        base_model=str(loaded.checkpoint_dir),
    )
    return OpenVLAPolicy(config, loaded.model, loaded.processor, statistics=statistics, seed=seed)
