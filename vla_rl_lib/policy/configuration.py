"""``PolicyConfig``: what a policy is besides its weights, saved as ``policy_config.json`` beside them.

As LeRobot's ``configuration_*.py``: one dataclass, each field with its
default, bounds and description; ``HFVLAPolicy(config, model, processor)``
is built from it, and ``from_checkpoint`` reads it back rather than
restating defaults. The file is versioned (``format``); the previous format
(``vla_rl_policy/1``, which named LoRA as ``use_lora`` + settings) is read too. Format 2
files written before 2026-11-30 repeat ``lora.enabled`` as ``use_lora``; they still load
(the two must agree), and the key is no longer written: the ``lora`` section decides.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from vla_rl_lib.policy.lora import LoRAConfig

DEFAULT_PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
DECODING_MODES = ("parallel", "autoregressive")
POLICY_CONFIG_FILE = "policy_config.json"
POLICY_FORMAT = "vla_rl_policy/2"
POLICY_FORMAT_V1 = "vla_rl_policy/1"


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PolicyConfig:
    """How an ``HFVLAPolicy`` reads its model's output, and what of it trains."""

    action_dim: int = Field(default=8, ge=1, description="action tokens per step (CRANE-X7: 7 joints + gripper)")
    decoding: Literal["parallel", "autoregressive"] = Field(
        default="parallel",
        description="parallel: every action token in one pass; autoregressive: one token per pass",
    )
    prompt_template: str = Field(
        default=DEFAULT_PROMPT_TEMPLATE, description="the prompt, with an {instruction} field"
    )
    unnorm_key: str | None = Field(
        default=None, description="dataset key of the action statistics in dataset_statistics.json"
    )
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="the LoRA adapter, or none")
    value_head_width: int = Field(default=256, ge=1, description="hidden width of the value MLP")
    action_token_end: int | None = Field(
        default=None,
        description="one past the last action-bin id (null: the tokenizer's vocab_size)",
    )
    n_action_bins: int = Field(default=256, ge=2, description="action bins per dimension")
    placeholder_token_ids: list[int] | None = Field(
        default=None,
        description="parallel decoding's input id per action slot (null: <action_slot_d>, else pad)",
    )
    base_model: str | None = Field(
        default=None,
        description="where a LoRA policy's frozen base lives (null: saved inside the checkpoint)",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_instruction(cls, template: str) -> str:
        if "{instruction}" not in template:
            raise ValueError(f"prompt_template {template!r} has no '{{instruction}}' field to fill")
        return template

    def to_json_dict(self) -> dict[str, Any]:
        """The file's content: the format, then every field (``lora.enabled`` says whether LoRA)."""
        return {"format": POLICY_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def read(cls, file: str | Path) -> PolicyConfig:
        """Read ``policy_config.json``; a corrupt or foreign file is a one-line ``ValueError``."""
        file = Path(file)
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(_unreadable(file, f"not JSON: {exc}")) from exc
        if not isinstance(data, dict):
            raise ValueError(_unreadable(file, f"a JSON {type(data).__name__}, not an object"))
        version = data.pop("format", None)
        if version == POLICY_FORMAT_V1:
            data = _from_v1(data)
        elif version == POLICY_FORMAT:
            _check_use_lora(file, data)
        else:
            raise ValueError(
                f"{file} has format {version!r}; this code reads {POLICY_FORMAT!r} and "
                f"{POLICY_FORMAT_V1!r}: re-save the policy with the code that wrote it"
            )
        try:
            return cls(**data)
        except (ValidationError, TypeError) as exc:
            raise ValueError(_unreadable(file, _one_line(exc))) from exc


def _check_use_lora(file: Path, data: dict[str, Any]) -> None:
    """Early format 2 files repeat ``lora.enabled`` as ``use_lora`` (dropped here); the two
    must agree."""
    use_lora, lora = data.pop("use_lora", None), data.get("lora")
    enabled = lora.get("enabled", False) if isinstance(lora, dict) else None
    if use_lora is not None and enabled is not None and use_lora != enabled:
        raise ValueError(_unreadable(file, f"use_lora={use_lora} but lora.enabled={enabled}"))


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept ``use_lora`` beside the settings (None for a full-weight policy)."""
    data = dict(data)
    use_lora = data.pop("use_lora", None)
    lora = data.get("lora")
    if not isinstance(use_lora, bool) or not (lora is None or isinstance(lora, dict)):
        return data  # PolicyConfig names what is wrong
    data["lora"] = {**lora, "enabled": True} if use_lora and lora else {"enabled": use_lora}
    return data


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def _unreadable(file: Path, why: str) -> str:
    return (
        f"{file} is not a valid policy config ({why}); restore it from a copy, or re-save the "
        "policy with save_pretrained"
    )
