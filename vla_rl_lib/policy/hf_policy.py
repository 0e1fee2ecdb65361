"""``HFVLAPolicy``: any Hugging Face image-text-to-text model as a ``VLAPolicy``.

The model reads an image and an OpenVLA-style prompt and emits ``action_dim``
action tokens (see ``action_tokenizer``). Two decodings:

- ``"autoregressive"`` (OpenVLA): one token per forward pass with a KV cache
  in ``act``; ``evaluate_actions`` teacher-forces prompt + tokens in one pass.
- ``"parallel"`` (OpenVLA-OFT style): the prompt is followed by ``action_dim``
  placeholder tokens (``<action_slot_d>`` when the tokenizer has them, as the
  tiny VLA's does, else the pad token in every slot); a 4D mask is causal over the prompt and bidirectional
  over the placeholder block, and the placeholder at slot ``d`` predicts
  action token ``d``. ``act`` and ``evaluate_actions`` run the very same pass.

Log-probs and entropies are taken over the 256 action-bin logits only (the
rest of the vocabulary masked), after dividing by ``temperature``; a step's
value is the sum over its ``action_dim`` tokens. The value head reads the
final hidden state at the last prompt position (the one that predicts the
first action token in autoregressive mode); in both modes that state depends
on the prompt and image only, never on the actions.

Batches are left-padded (prompts of different lengths end at the same
position); position ids count only real tokens. Images are uint8
``(B, H, W, 3)`` of any size: they are resized inside the policy (bicubic,
antialiased, aspect ratio not kept) to the processor's ``size`` and
normalized with its mean/std, in torch, which is much faster per step than
the PIL image processor. LoRA dropout defaults to 0 so that rollout and
update see the same function.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    DynamicCache,
)

from vla_rl_lib.policy.action_tokenizer import (
    DATASET_STATISTICS_FILE,
    ActionStatistics,
    ActionTokenizer,
    load_action_statistics,
    write_dataset_statistics,
)
from vla_rl_lib.policy.base import ActOutput, EvaluateOutput, VLAPolicy
from vla_rl_lib.policy.configuration import (
    DECODING_MODES,
    DEFAULT_PROMPT_TEMPLATE,
    POLICY_CONFIG_FILE,
    PolicyConfig,
)
from vla_rl_lib.policy.lora import LoRAConfig
from vla_rl_lib.policy.tiny_vla import (
    ConvStemLlava,
    TinyVLAConfig,
    action_slot_token,
    build_tiny_vla,
    vision_stem_of,
)
from vla_rl_lib.policy.tiny_vla_lean import LeanTinyVLA
from vla_rl_lib.utils import atomic_directory, write_json_atomic

__all__ = ["DECODING_MODES", "DEFAULT_PROMPT_TEMPLATE", "POLICY_CONFIG_FILE", "HFVLAPolicy", "build_policy"]

VALUE_HEAD_FILE = "value_head.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
BASE_MODEL_DIR = "base_model"

ModelLoader = Callable[[str], tuple[nn.Module, Any]]


class ValueHead(nn.Module):
    """Two-layer MLP from a decoder hidden state to a scalar value (fp32)."""

    def __init__(self, hidden_size: int, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.float()).squeeze(-1)


def bin_log_probs_and_entropy(
    bin_logits: torch.Tensor, bins: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D, 256) action-bin logits, (B, D) bin indices -> per-step log-prob and entropy, (B,)."""
    log_probs = F.log_softmax(bin_logits.float() / temperature, dim=-1)
    chosen = log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return chosen.sum(-1), entropy.sum(-1)


@dataclass
class _Prompts:
    input_ids: torch.Tensor  # (B, P), left-padded
    attention_mask: torch.Tensor  # (B, P) bool, False on padding
    pixel_values: torch.Tensor


@dataclass
class _Scores:
    bin_logits: torch.Tensor  # (B, D, 256)
    prompt_hidden: torch.Tensor  # (B, H) at the last prompt position
    extra: dict[str, Any] = field(default_factory=dict)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class HFVLAPolicy(VLAPolicy):
    """A VLA (HF image-text-to-text model + processor) with a value head, shaped by a ``PolicyConfig``.

    ``model`` may be a plain transformers model (``config.lora.enabled`` wraps it
    with a fresh adapter, otherwise every weight trains) or an already-built
    ``PeftModel``. The action bins are ``config.action_token_end`` (default: the
    processor's ``tokenizer.vocab_size``) minus ``n_action_bins``.
    ``config.base_model`` names the directory a LoRA model's frozen base was
    loaded from; when None, ``save_pretrained`` writes a copy of the base into
    the checkpoint. ``statistics`` un-normalize actions (saved as
    ``dataset_statistics.json`` under ``config.unnorm_key``); ``seed`` draws the
    value head and any fresh adapter. ``self.config`` is the given config with
    what was derived filled in, i.e. what ``save_pretrained`` writes. Subclasses
    for models whose forward differs from Llava's (OpenVLA) override
    ``preprocess_images``, ``_encode_prompt_ids`` and ``_decoder_hidden``. ``lean_forward``
    runs the parallel-decoding pass of a model ``LeanTinyVLA`` reproduces (the tiny VLA)
    in plain torch: the same bits as transformers, less per-call overhead.
    """

    # The ``PolicySettings`` ``loading.load_base_policy`` loaded this policy with, so that a
    # rollout worker can load the same base; None for a policy built any other way.
    load_settings: Any = None

    def __init__(
        self,
        config: PolicyConfig,
        model: nn.Module,
        processor: Any,
        *,
        statistics: ActionStatistics | None = None,
        seed: int = 0,
        lean_forward: bool = True,
    ) -> None:
        super().__init__()
        _check_statistics(config, statistics)
        self.processor = processor
        self.statistics = statistics
        tokenizer = processor.tokenizer
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        placeholders = config.placeholder_token_ids or _default_placeholders(
            tokenizer, config.action_dim, self.pad_token_id
        )
        if len(placeholders) != config.action_dim:
            raise ValueError(
                f"placeholder_token_ids has {len(placeholders)} ids; "
                f"parallel decoding needs one per action dim ({config.action_dim})"
            )
        action_token_end = config.action_token_end or tokenizer.vocab_size
        self.action_tokenizer = ActionTokenizer(action_token_end, config.n_action_bins)
        self._prompt_cache: dict[str, list[int]] = {}
        self.lean_forward = lean_forward
        self._lean: tuple[nn.Module, LeanTinyVLA | None] | None = None
        self._normalization_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lora = config.lora
            if isinstance(model, PeftModel):
                if not lora.enabled:
                    lora = LoRAConfig.of_peft_config(model.peft_config[model.active_adapter])
            elif lora.enabled:
                model = get_peft_model(model, lora.to_peft_config())
            else:
                model.requires_grad_(True)
            self.model = model
            hidden_size = self._hf_model().get_output_embeddings().in_features
            self.value_head = ValueHead(hidden_size, config.value_head_width)
        self.value_head.to(self.device)
        self.config = dataclasses.replace(
            config, lora=lora, action_token_end=action_token_end, placeholder_token_ids=placeholders
        )
        vocab_rows = self._hf_model().get_output_embeddings().out_features
        if self.action_tokenizer.vocab_end > vocab_rows:
            raise ValueError(
                f"action ids end at {self.action_tokenizer.vocab_end} but the model's output layer "
                f"has only {vocab_rows} rows; set PolicyConfig.action_token_end to fit it."
            )

    # ------------------------------------------------------------------ the config's fields

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def decoding(self) -> str:
        return self.config.decoding

    @property
    def prompt_template(self) -> str:
        return self.config.prompt_template

    @property
    def unnorm_key(self) -> str | None:
        return self.config.unnorm_key

    @unnorm_key.setter
    def unnorm_key(self, key: str | None) -> None:
        """SFT names the statistics it sets (``sft.trainer.set_action_statistics``)."""
        self.config = dataclasses.replace(self.config, unnorm_key=key)

    @property
    def placeholder_token_ids(self) -> list[int]:
        return self.config.placeholder_token_ids or []

    @property
    def lora(self) -> LoRAConfig | None:
        """The adapter's settings; None for a full-weight policy."""
        return self.config.lora if self.config.lora.enabled else None

    # ------------------------------------------------------------------ basics

    @property
    def use_lora(self) -> bool:
        return isinstance(self.model, PeftModel)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _hf_model(self) -> nn.Module:
        """The transformers model (LoRA layers injected in place when wrapped)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    # ------------------------------------------------------------------ inputs

    def preprocess_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) of any size -> normalized pixel values (B, 3, h, w) on the device."""
        pixels = uint8_images(images)
        image_processor = self.processor.image_processor
        size = image_processor.size
        height, width = _height_width(size)
        x = pixels.to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (height, width):
            x = F.interpolate(
                x, size=(height, width), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 255)
        if getattr(image_processor, "do_rescale", True):
            x = x * float(getattr(image_processor, "rescale_factor", 1 / 255))
        if getattr(image_processor, "do_normalize", True):
            mean, std = self._normalization(x.device)
            x = (x - mean) / std
        return x.to(self._hf_model().dtype)

    def _normalization(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The image processor's mean and std as (1, C, 1, 1) tensors, made once per device."""
        cached = self._normalization_cache.get(device)
        if cached is None:
            image_processor = self.processor.image_processor
            cached = tuple(
                torch.tensor(values, device=device).view(1, -1, 1, 1)
                for values in (image_processor.image_mean, image_processor.image_std)
            )
            self._normalization_cache[device] = cached
        return cached

    def prompt_text(self, instruction: str) -> str:
        image_token = getattr(self.processor, "image_token", None) or ""
        return image_token + self.prompt_template.format(instruction=instruction)

    def _encode_prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of one prompt as the model consumes them (image tokens expanded), cached."""
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            height, width = _height_width(self.processor.image_processor.size)
            blank = np.zeros((height, width, 3), dtype=np.uint8)
            encoded = self.processor(
                text=[self.prompt_text(instruction)], images=[blank], return_tensors="pt"
            )
            ids = encoded["input_ids"][0].tolist()
            self._prompt_cache[instruction] = ids
        return ids

    def _prompts(self, images: np.ndarray | torch.Tensor, instructions: list[str]) -> _Prompts:
        if len(instructions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        rows = [self._encode_prompt_ids(text) for text in instructions]
        length = max(len(row) for row in rows)
        # Left-padded in Python, then one tensor each: per-row tensor writes cost more.
        input_ids = torch.tensor([[self.pad_token_id] * (length - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[False] * (length - len(r)) + [True] * len(r) for r in rows])
        device = self.device
        return _Prompts(
            input_ids.to(device), attention_mask.to(device), self.preprocess_images(images)
        )

    # ------------------------------------------------------------------ model passes

    def _decoder_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """Final (normed) decoder hidden states (B, L, H), one per input position."""
        lean = self._lean_forward() if cache is None else None
        if lean is not None and lean.accepts(attention_mask):
            return lean(input_ids, attention_mask, position_ids, pixel_values)
        outputs = self._hf_model().model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return outputs.last_hidden_state

    def _lean_forward(self) -> LeanTinyVLA | None:
        """The plain-torch forward of the tiny VLA when ``lean_forward`` is on and it fits the model.

        Rebuilt when the transformers model object changes (``merge_lora``); None for models
        it does not reproduce bit for bit, which keep the transformers forward.
        """
        if not self.lean_forward:
            return None
        hf_model = self._hf_model()
        if self._lean is None or self._lean[0] is not hf_model:
            self._lean = (hf_model, LeanTinyVLA.for_model(hf_model))
        return self._lean[1]

    def _bin_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> the 256 action-bin logits (..., 256), fp32."""
        head = self._hf_model().get_output_embeddings()
        actions = slice(self.action_tokenizer.action_token_begin, self.action_tokenizer.vocab_end)
        if type(head) is nn.Linear:  # only the 256 action rows of the head (LoRA-wrapped: all)
            bias = None if head.bias is None else head.bias[actions]
            return F.linear(hidden, head.weight[actions], bias).float()
        return head(hidden)[..., actions].float()

    def _parallel_scores(self, prompts: _Prompts) -> _Scores:
        batch, prompt_len = prompts.input_ids.shape
        dim = self.action_dim
        total = prompt_len + dim
        device = prompts.input_ids.device
        placeholders = torch.tensor(self.placeholder_token_ids, device=device).expand(batch, dim)
        input_ids = torch.cat([prompts.input_ids, placeholders], dim=1)
        key_valid = torch.cat(
            [prompts.attention_mask, torch.ones((batch, dim), dtype=torch.bool, device=device)], 1
        )
        allowed = torch.ones((total, total), dtype=torch.bool, device=device).tril()
        allowed[prompt_len:, prompt_len:] = True  # the action block sees itself both ways
        mask = allowed.unsqueeze(0) & key_valid.unsqueeze(1)
        # A padding row would otherwise see nothing and turn into NaN; let it see itself.
        mask |= torch.eye(total, dtype=torch.bool, device=device).unsqueeze(0)
        hidden = self._decoder_hidden(
            input_ids, mask.unsqueeze(1), _position_ids(key_valid), prompts.pixel_values
        )
        return _Scores(self._bin_logits(hidden[:, prompt_len:]), hidden[:, prompt_len - 1])

    def _teacher_forced_scores(self, prompts: _Prompts, token_ids: torch.Tensor) -> _Scores:
        prompt_len = prompts.input_ids.shape[1]
        dim = self.action_dim
        input_ids = torch.cat([prompts.input_ids, token_ids[:, : dim - 1]], dim=1)
        attention_mask = torch.cat(
            [prompts.attention_mask, torch.ones_like(token_ids[:, : dim - 1], dtype=torch.bool)], 1
        )
        hidden = self._decoder_hidden(
            input_ids, attention_mask.long(), _position_ids(attention_mask), prompts.pixel_values
        )
        predicting = hidden[:, prompt_len - 1 : prompt_len - 1 + dim]
        return _Scores(self._bin_logits(predicting), hidden[:, prompt_len - 1])

    def _scores(self, prompts: _Prompts, token_ids: torch.Tensor) -> _Scores:
        if self.decoding == "parallel":
            return self._parallel_scores(prompts)
        return self._teacher_forced_scores(prompts, token_ids)

    def _check_token_ids(self, token_ids: torch.Tensor, batch: int) -> torch.Tensor:
        token_ids = torch.as_tensor(token_ids, device=self.device).long()
        if token_ids.shape != (batch, self.action_dim):
            raise ValueError(
                f"token_ids must be (B={batch}, D={self.action_dim}), got {tuple(token_ids.shape)}"
            )
        begin, end = self.action_tokenizer.action_token_begin, self.action_tokenizer.vocab_end
        if ((token_ids < begin) | (token_ids >= end)).any():
            raise ValueError(f"token_ids must be action ids in [{begin}, {end})")
        return token_ids

    # ------------------------------------------------------------------ VLAPolicy

    @torch.no_grad()
    def act(
        self,
        images: np.ndarray,
        instructions: list[str],
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> ActOutput:
        """Sample (or argmax) one action per image. Log-probs use ``temperature`` even when greedy."""
        _check_temperature(temperature)
        prompts = self._prompts(images, instructions)
        if self.decoding == "parallel":
            scores = self._parallel_scores(prompts)
            bins = _choose(scores.bin_logits, temperature, greedy)
        else:
            scores, bins = self._autoregressive_sample(prompts, temperature, greedy)
        log_probs, _ = bin_log_probs_and_entropy(scores.bin_logits, bins, temperature)
        token_ids = self.action_tokenizer.bins_to_ids(bins)
        normalized = self.action_tokenizer.decode(token_ids)
        actions = normalized if self.statistics is None else self.statistics.unnormalize(normalized)
        return ActOutput(
            actions=np.asarray(actions, dtype=np.float32),
            token_ids=token_ids,
            log_probs=log_probs,
            values=self.value_head(scores.prompt_hidden),
        )

    def _autoregressive_sample(
        self, prompts: _Prompts, temperature: float, greedy: bool
    ) -> tuple[_Scores, torch.Tensor]:
        cache = DynamicCache(config=self._hf_model().config.get_text_config())
        attention_mask = prompts.attention_mask
        positions = _position_ids(attention_mask)
        hidden = self._decoder_hidden(
            prompts.input_ids, attention_mask.long(), positions, prompts.pixel_values, cache
        )
        prompt_hidden = hidden[:, -1]
        step_hidden = prompt_hidden
        next_position = positions[:, -1:] + 1
        all_logits, all_bins = [], []
        for step in range(self.action_dim):
            logits = self._bin_logits(step_hidden)
            bins = _choose(logits, temperature, greedy)
            all_logits.append(logits)
            all_bins.append(bins)
            if step == self.action_dim - 1:
                break
            attention_mask = torch.cat(
                [attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1
            )
            hidden = self._decoder_hidden(
                self.action_tokenizer.bins_to_ids(bins).unsqueeze(1),
                attention_mask.long(),
                next_position,
                None,
                cache,
            )
            step_hidden = hidden[:, -1]
            next_position = next_position + 1
        return _Scores(torch.stack(all_logits, 1), prompt_hidden), torch.stack(all_bins, 1)

    def evaluate_actions(
        self,
        images: np.ndarray | torch.Tensor,
        instructions: list[str],
        token_ids: torch.Tensor,
        temperature: float = 1.0,
    ) -> EvaluateOutput:
        _check_temperature(temperature)
        token_ids = self._check_token_ids(token_ids, len(instructions))
        prompts = self._prompts(images, instructions)
        scores = self._scores(prompts, token_ids)
        log_probs, entropy = bin_log_probs_and_entropy(
            scores.bin_logits, self.action_tokenizer.ids_to_bins(token_ids), temperature
        )
        return EvaluateOutput(log_probs, entropy, self.value_head(scores.prompt_hidden))

    def sft_loss(
        self, images: np.ndarray | torch.Tensor, instructions: list[str], token_ids: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy of the action tokens over the 256 bins (the distribution ``act`` samples)."""
        token_ids = self._check_token_ids(token_ids, len(instructions))
        scores = self._scores(self._prompts(images, instructions), token_ids)
        return F.cross_entropy(
            scores.bin_logits.reshape(-1, self.action_tokenizer.n_bins),
            self.action_tokenizer.ids_to_bins(token_ids).reshape(-1),
        )

    def actions_to_tokens(self, actions: np.ndarray) -> torch.Tensor:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"actions must be (B, {self.action_dim}), got {actions.shape}")
        normalized = actions if self.statistics is None else self.statistics.normalize(actions)
        return torch.from_numpy(self.action_tokenizer.encode(normalized)).to(self.device)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.use_lora:
            policy_state = get_peft_model_state_dict(self.model)
        else:
            policy_state = self.model.state_dict()
        state = {f"model.{key}": value for key, value in policy_state.items()}
        state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"trainable state does not fit this policy (use_lora={self.use_lora}): "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        head_state = {
            k[len("value_head.") :]: v for k, v in state.items() if k.startswith("value_head.")
        }
        if self.use_lora:
            set_peft_model_state_dict(self.model, model_state)
        else:
            self.model.load_state_dict(model_state, strict=True)
        self.value_head.load_state_dict(head_state, strict=True)

    def optimizer_param_groups(
        self, learning_rate: float, value_learning_rate: float
    ) -> list[dict[str, Any]]:
        policy_params = [p for p in self.model.parameters() if p.requires_grad]
        return [
            {"params": policy_params, "lr": learning_rate, "name": "policy"},
            {
                "params": list(self.value_head.parameters()),
                "lr": value_learning_rate,
                "name": "value_head",
            },
        ]

    def enable_gradient_checkpointing(self) -> int:
        """Recompute each transformer block's activations in backward; returns the blocks affected.

        transformers checkpoints a block only while that block is in training mode, and the
        policy runs in eval mode (no dropout, so act() and evaluate_actions() agree): the flag is set on
        the blocks themselves, not on their children, so dropout stays off.
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        self._hf_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        blocks = [m for m in self.modules() if isinstance(m, GradientCheckpointingLayer)]
        for block in blocks:
            block.training = True
        return len(blocks)

    def merge_lora(self) -> None:
        """Fold the LoRA adapter into the base weights (faster inference; saves as a merged model)."""
        if not self.use_lora:
            raise ValueError(
                "merge_lora: this policy has no LoRA adapter (it is already full-weight)"
            )
        self.model = self.model.merge_and_unload()
        lora = dataclasses.replace(self.config.lora, enabled=False)
        self.config = dataclasses.replace(self.config, lora=lora, base_model=None)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, path: str) -> None:
        """Write a checkpoint directory; see ``from_checkpoint`` for its layout."""
        final = Path(path).absolute()
        config = self.config
        with atomic_directory(final) as tmp:
            self.processor.save_pretrained(tmp)
            if self.use_lora:
                self.model.save_pretrained(tmp)
                if config.base_model is None:
                    _save_base_without_lora(self._hf_model(), tmp / BASE_MODEL_DIR)
                    self.processor.save_pretrained(tmp / BASE_MODEL_DIR)
                    config = dataclasses.replace(config, base_model=BASE_MODEL_DIR)
                    base_for_peft = str(final / BASE_MODEL_DIR)
                else:
                    config = dataclasses.replace(
                        config, base_model=str(Path(config.base_model).absolute())
                    )
                    base_for_peft = config.base_model
                adapter_config = json.loads((tmp / ADAPTER_CONFIG_FILE).read_text())
                adapter_config["base_model_name_or_path"] = base_for_peft
                write_json_atomic(tmp / ADAPTER_CONFIG_FILE, adapter_config)
            else:
                self._hf_model().save_pretrained(tmp)
            save_file(
                {k: v.contiguous() for k, v in self.value_head.state_dict().items()},
                str(tmp / VALUE_HEAD_FILE),
            )
            if self.statistics is not None:
                write_dataset_statistics(tmp, self.unnorm_key, self.statistics)
            write_json_atomic(tmp / POLICY_CONFIG_FILE, config.to_json_dict())

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        decoding: str | None = None,
        action_dim: int | None = None,
        prompt_template: str | None = None,
        unnorm_key: str | None = None,
        lora: LoRAConfig | None = None,
        model_loader: ModelLoader | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> HFVLAPolicy:
        """Load one of three kinds of directory.

        1. A checkpoint written by ``save_pretrained``: ``policy_config.json`` (a
           ``PolicyConfig``), processor files, ``value_head.safetensors``, and either a
           LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``, base in
           ``base_model/`` or at the path the config names) or full weights
           (``config.json`` + ``model.safetensors``). ``decoding``, ``action_dim``,
           ``prompt_template`` and ``unnorm_key``, when given, override the saved ones.
        2. A bare LoRA adapter directory: ``adapter_config.json`` names the base model.
        3. A merged (or any plain) model directory: ``config.json`` + weights; an enabled
           ``lora`` wraps it with a fresh trainable adapter, otherwise every weight trains.

        LoRA adapters are loaded trainable (``is_trainable=True``), so training resumes.
        ``dataset_statistics.json`` is picked up when present. Kinds 2 and 3 get a fresh
        value head. ``model_loader(dir) -> (model, processor)`` replaces
        ``AutoModelForImageTextToText`` / ``AutoProcessor`` (OpenVLA's remote code).
        """
        root = Path(path).absolute()
        saved, present = _read_saved_config(root)
        config = saved or PolicyConfig(lora=lora or LoRAConfig())
        model, processor, base_model = _load_model(
            root, saved, present, model_loader or (lambda d: _auto_load(d, dtype)), model_loader
        )
        if action_dim and action_dim != config.action_dim:
            config = dataclasses.replace(config, action_dim=action_dim, placeholder_token_ids=None)
        config = dataclasses.replace(
            config,
            decoding=decoding or config.decoding,
            prompt_template=prompt_template or config.prompt_template,
            base_model=base_model,
        )
        statistics, unnorm_key = _load_statistics(root, unnorm_key or config.unnorm_key, saved)
        config = dataclasses.replace(config, unnorm_key=unnorm_key)
        policy = cls(config, model.to(device), processor, statistics=statistics, seed=seed)
        if saved:
            policy.value_head.load_state_dict(load_file(str(root / VALUE_HEAD_FILE)), strict=True)
        return policy


# ---------------------------------------------------------------------- helpers


def uint8_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``images`` as a tensor, refused unless uint8 (B, H, W, 3)."""
    pixels = torch.as_tensor(images)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 (B, H, W, 3), got {pixels.dtype} {tuple(pixels.shape)}"
        )
    return pixels


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use greedy=True for argmax)")


def _choose(bin_logits: torch.Tensor, temperature: float, greedy: bool) -> torch.Tensor:
    if greedy:
        return bin_logits.argmax(-1)
    probs = F.softmax(bin_logits / temperature, dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])


def _default_placeholders(tokenizer: Any, action_dim: int, pad_token_id: int) -> list[int]:
    """``<action_slot_d>`` tokens when the tokenizer has them (tiny VLA), else the pad id per slot."""
    names = [action_slot_token(slot) for slot in range(action_dim)]
    ids = tokenizer.convert_tokens_to_ids(names)
    if (
        all(i is not None and i != tokenizer.unk_token_id for i in ids)
        and len(set(ids)) == action_dim
    ):
        return list(ids)
    return [pad_token_id] * action_dim


def _height_width(size: dict[str, int]) -> tuple[int, int]:
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError(
        f"image processor size {size} has no height/width; subclass HFVLAPolicy and override "
        "preprocess_images for this processor"
    )


def _check_statistics(config: PolicyConfig, statistics: ActionStatistics | None) -> None:
    if statistics is None:
        return
    if config.unnorm_key is None:
        raise ValueError(
            "statistics were given without unnorm_key; name the dataset they describe "
            "(it becomes the key in dataset_statistics.json)."
        )
    if statistics.action_dim != config.action_dim:
        raise ValueError(
            f"statistics describe {statistics.action_dim} action dims but action_dim={config.action_dim}"
        )


def _read_saved_config(root: Path) -> tuple[PolicyConfig | None, list[str]]:
    """The saved ``PolicyConfig`` (None for a bare adapter or model directory) and the files present."""
    if not root.is_dir():
        raise FileNotFoundError(f"policy checkpoint {root} does not exist or is not a directory")
    present = sorted(p.name for p in root.iterdir())
    if POLICY_CONFIG_FILE in present:
        saved = PolicyConfig.read(root / POLICY_CONFIG_FILE)
        _require(root, [VALUE_HEAD_FILE], present)
        return saved, present
    if ADAPTER_CONFIG_FILE in present or "config.json" in present:
        return None, present
    raise FileNotFoundError(
        f"{root} is not a policy checkpoint: expected {POLICY_CONFIG_FILE} (saved policy), "
        f"{ADAPTER_CONFIG_FILE} (LoRA adapter) or config.json (merged model); it holds {present}"
    )


def _load_model(
    root: Path,
    saved: PolicyConfig | None,
    present: list[str],
    load: ModelLoader,
    model_loader: ModelLoader | None,
) -> tuple[nn.Module, Any, str | None]:
    """(model, processor, the external base directory of a LoRA adapter or None)."""
    is_adapter = saved.lora.enabled if saved else ADAPTER_CONFIG_FILE in present
    if not is_adapter:
        if not any(name.endswith((".safetensors", ".bin")) for name in present):
            raise FileNotFoundError(
                f"{root} has config.json but no weight files (*.safetensors); it holds {present}"
            )
        model, processor = load(str(root))
        return model, processor, None
    _require(root, [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE], present)
    base_dir = _resolve_base(root, saved)
    model, processor = load(str(base_dir))
    if _has_processor(root):
        processor = _load_processor(root, model_loader)
    model = PeftModel.from_pretrained(model, str(root), is_trainable=True)
    external = saved is None or saved.base_model != BASE_MODEL_DIR
    return model, processor, str(base_dir) if external else None


def _load_statistics(
    root: Path, unnorm_key: str | None, saved: PolicyConfig | None
) -> tuple[ActionStatistics | None, str | None]:
    """``dataset_statistics.json``'s entry ``unnorm_key`` (the only one when None), and its key."""
    if not (root / DATASET_STATISTICS_FILE).is_file():
        if unnorm_key is not None and saved is not None and saved.unnorm_key:
            raise FileNotFoundError(
                f"{root / POLICY_CONFIG_FILE} names unnorm_key {unnorm_key!r} but "
                f"{DATASET_STATISTICS_FILE} is missing from {root}"
            )
        return None, None
    statistics = load_action_statistics(root, unnorm_key)
    if unnorm_key is None:
        unnorm_key = next(iter(json.loads((root / DATASET_STATISTICS_FILE).read_text())))
    return statistics, unnorm_key


def _require(root: Path, names: list[str], present: list[str]) -> None:
    missing = [name for name in names if name not in present]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {root} is incomplete: missing {missing}; it holds {present}"
        )


def _has_processor(root: Path) -> bool:
    return (root / "processor_config.json").is_file() or (root / "tokenizer_config.json").is_file()


def _load_processor(root: Path, model_loader: ModelLoader | None) -> Any:
    return (
        AutoProcessor.from_pretrained(str(root))
        if model_loader is None
        else model_loader(str(root))[1]
    )


def _auto_load(directory: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"base model directory {root} has no config.json")
    if not _has_processor(root):
        raise FileNotFoundError(
            f"{root} has no processor/tokenizer files (processor_config.json, tokenizer_config.json)"
        )
    config = AutoConfig.from_pretrained(directory)
    # transformers alone would build a patch conv and drop a conv stem's weights.
    model_class = ConvStemLlava if vision_stem_of(config) == "conv" else AutoModelForImageTextToText
    model, info = model_class.from_pretrained(
        directory, config=config, dtype=dtype, output_loading_info=True
    )
    _check_loading_info(root, info)
    model.eval()
    return model, AutoProcessor.from_pretrained(directory)


def _check_loading_info(root: Path, info: dict[str, Any]) -> None:
    """Refuse weights transformers would drop or re-draw (it only warns): the model is not the one saved."""
    mismatched = {
        kind: sorted(info.get(kind) or [])
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(kind)
    }
    if mismatched:
        raise ValueError(
            f"{root / 'config.json'} does not describe the weights saved beside it: {mismatched}; "
            "save the model with save_pretrained from this version (a conv-stem tiny VLA records "
            "vision_config.vision_stem in its config.json)"
        )


def _resolve_base(root: Path, saved: PolicyConfig | None) -> Path:
    if saved:
        named = saved.base_model
        source = POLICY_CONFIG_FILE
    else:
        named = json.loads((root / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")
        source = ADAPTER_CONFIG_FILE
    if not named:
        raise FileNotFoundError(f"{root / source} does not name the base model of the adapter")
    candidates = [Path(named)] if Path(named).is_absolute() else [root / named, Path(named)]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.absolute()
    raise FileNotFoundError(
        f"base model {named!r} named in {root / source} not found (looked at "
        f"{[str(c) for c in candidates]}); copy the base model there or edit the path"
    )


def _save_base_without_lora(hf_model: nn.Module, directory: Path) -> None:
    """Save a LoRA-wrapped transformers model's frozen base weights as a plain model."""
    state = {
        key.replace(".base_layer.", "."): value
        for key, value in hf_model.state_dict().items()
        if ".lora_" not in key
    }
    hf_model.save_pretrained(directory, state_dict=state)


def build_policy(
    sizes: TinyVLAConfig | None = None,
    lora: LoRAConfig | None = None,
    seed: int = 0,
    *,
    statistics: ActionStatistics | None = None,
    device: str | torch.device = "cpu",
    lean_forward: bool = True,
    **config: Any,
) -> HFVLAPolicy:
    """A fresh tiny-VLA policy (random base weights from ``seed``).

    ``lora`` (None: every weight trains) and the other ``PolicyConfig`` fields
    given as keywords (``decoding``, ``action_dim``, ``unnorm_key``, ...) make its config.
    """
    policy_config = PolicyConfig(lora=lora or LoRAConfig(), **config)
    sizes = sizes or TinyVLAConfig()
    if policy_config.action_dim > sizes.action_slots:
        raise ValueError(
            f"action_dim={policy_config.action_dim} exceeds TinyVLAConfig.action_slots="
            f"{sizes.action_slots}; raise action_slots so every action dim has its own "
            "parallel-decoding slot token"
        )
    model, processor = build_tiny_vla(sizes, seed=seed)
    return HFVLAPolicy(
        policy_config, model.to(device), processor, statistics=statistics, seed=seed,
        lean_forward=lean_forward,
    )  # fmt: skip
