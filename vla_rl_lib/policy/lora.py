"""The one LoRA configuration: the run config's ``lora`` section and a policy's adapter shape.

A pydantic dataclass, so a bad value is refused where it is built (YAML, CLI
or code) with the field's name, and each field carries its description.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass


@dataclass(config=ConfigDict(extra="forbid"))
class LoRAConfig:
    """A LoRA adapter on the policy's linear layers; ``enabled: false`` trains every weight."""

    enabled: bool = Field(
        default=False,
        description="train a LoRA adapter (frozen base) instead of every weight",
    )
    rank: int = Field(default=8, ge=1, description="adapter rank r")
    alpha: float = Field(default=16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="dropout on the adapter input; > 0 makes rollout and update log-probs disagree",
    )
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="'all-linear' (every linear layer but the output head) or a list of module names",
    )
    exclude_modules: list[str] | None = Field(
        default=None, description="module names left without an adapter (null: none)"
    )

    def __post_init__(self) -> None:
        why = target_modules_problem(self.target_modules)
        if why:
            raise ValueError(f"lora.target_modules={self.target_modules!r}: {why}")

    def to_peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of these settings (peft is imported here, not with the module)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules),
            exclude_modules=None if self.exclude_modules is None else list(self.exclude_modules),
            bias="none",
        )

    @classmethod
    def of_peft_config(cls, config: Any) -> LoRAConfig:
        """The settings of an existing adapter (a ``peft.LoraConfig``), enabled."""
        targets = config.target_modules
        excluded = config.exclude_modules
        return cls(
            enabled=True,
            rank=config.r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=targets if isinstance(targets, str) else sorted(targets),
            exclude_modules=None if excluded is None else sorted(excluded),
        )


def target_modules_problem(targets: str | list[str]) -> str | None:
    """Why ``targets`` is not a valid ``target_modules`` value, or None when it is."""
    if isinstance(targets, str):
        return None if targets == "all-linear" else "give 'all-linear' or a list of module names"
    if targets and all(name.strip() for name in targets):
        return None
    return "give 'all-linear' or a non-empty list of module names"
