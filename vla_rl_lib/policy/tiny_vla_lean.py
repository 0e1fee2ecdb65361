"""A plain-torch forward of the tiny VLA: the same network and ops as transformers, less overhead.

The tiny VLA (``tiny_vla.py``) is about 1M parameters over ~35 tokens, so a
good part of a policy step is per-module Python overhead in transformers and
peft (output-capturing hooks, mask preparation, kwargs plumbing, the LoRA
wrapper around each of ~45 small matmuls) rather than arithmetic. ``LeanTinyVLA``
computes the decoder's final hidden states of a ``LlavaForConditionalGeneration``
(SigLIP vision tower with its patch conv, ``ConvPatchStem`` or ``FiLMConvPatchStem``,
Llama decoder, SDPA attention) with the same functional calls, in the same order, on the same tensors,
so its output equals transformers' to the bit (``tests/test_policy_lean_forward.py``).

- Weights are read from the transformers modules at every call (never copied),
  so an optimizer step or ``load_state_dict`` is seen at once; autograd runs
  through the functional ops, so the PPO update can use the same path as the
  rollout and their log-probs stay equal.
- LoRA layers injected by peft are honoured (``result + B(A(x)) * scaling``,
  as peft computes it; merged or disabled adapters use the base layer alone,
  as peft does) while they are plain LoRA with one active adapter and no
  dropout; anything else (DoRA and other variants, LoRA dropout, another
  architecture or attention implementation) is refused by
  ``unsupported_reason`` and the caller keeps the transformers path.
- Only a prepared 4D boolean attention mask is accepted (parallel decoding
  passes one); a 2D padding mask, a KV cache or gradient checkpointing go
  through transformers, which owns those semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vla_rl_lib.policy.tiny_vla import (
    ConvPatchStem,
    ConvStemLlava,
    FiLMConvPatchStem,
    film_text_mask,
)

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}


def _lora_linear_class() -> type | None:
    try:
        from peft.tuners.lora import Linear
    except ImportError:  # peft is optional for a plain model
        return None
    return Linear


def _linear_reason(name: str, module: nn.Module) -> str | None:
    """Why ``module`` cannot be computed as ``F.linear`` (+ plain LoRA), or None when it can."""
    if type(module) is nn.Linear:
        return None
    lora_linear = _lora_linear_class()
    if lora_linear is None or not isinstance(module, lora_linear):
        return f"{name} is a {type(module).__name__}, not nn.Linear or a peft LoRA Linear"
    if type(module.base_layer) is not nn.Linear:
        return f"{name} wraps a {type(module.base_layer).__name__}"
    adapters = [a for a in module.active_adapters if a in module.lora_A]
    if len(adapters) != 1:
        return f"{name} has {len(adapters)} active LoRA adapters; the lean path handles one"
    adapter = adapters[0]
    if adapter in module.lora_variant:
        return f"{name} uses a LoRA variant ({type(module.lora_variant[adapter]).__name__})"
    if type(module.lora_dropout[adapter]) is not nn.Identity:
        return f"{name} has LoRA dropout (rollout and update would differ anyway)"
    if module.lora_A[adapter].bias is not None or module.lora_B[adapter].bias is not None:
        return f"{name} has LoRA biases"
    return None


def _activation_of(config_name: str, where: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if config_name not in _ACTIVATIONS:
        raise ValueError(f"{where}={config_name!r} has no lean equivalent")
    return _ACTIVATIONS[config_name]


class LeanTinyVLA:
    """Final normed decoder hidden states of a Llava(SigLIP, Llama) model, in plain torch.

    Build with ``LeanTinyVLA.for_model(model)``, which returns None (with the reason
    in ``unsupported_reason``) for a model it does not reproduce exactly.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = self.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LeanTinyVLA cannot reproduce this model: {reason}")
        self.model = model
        llava = model.model
        self._vision = llava.vision_tower
        self._projector = llava.multi_modal_projector
        self._text = llava.language_model
        config = model.config
        vision_layers = len(self._vision.encoder.layers)
        # hidden_states[0] is the patch embedding, hidden_states[k] the output of block k.
        self._vision_blocks = config.vision_feature_layer % (vision_layers + 1)
        self._image_token_id = config.image_token_id
        self._vision_act = _activation_of(config.vision_config.hidden_act, "vision hidden_act")
        self._projector_act = _activation_of(config.projector_hidden_act, "projector_hidden_act")
        self._text_act = _activation_of(config.text_config.hidden_act, "text hidden_act")
        self._text_head_dim = self._text.layers[0].self_attn.head_dim
        self._blocks = [(b, type(b)) for b in [*self._vision.encoder.layers, *self._text.layers]]

    @classmethod
    def for_model(cls, model: nn.Module) -> LeanTinyVLA | None:
        return None if cls.unsupported_reason(model) is not None else cls(model)

    @staticmethod
    def unsupported_reason(model: nn.Module) -> str | None:
        """None when the lean path reproduces ``model`` exactly, else a one-line reason."""
        from transformers import LlamaModel, LlavaForConditionalGeneration, SiglipVisionModel
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        if type(model) not in (LlavaForConditionalGeneration, ConvStemLlava):
            return f"the model is a {type(model).__name__}, not LlavaForConditionalGeneration"
        llava, config = model.model, model.config
        if type(llava.vision_tower) is not SiglipVisionModel:
            return f"the vision tower is a {type(llava.vision_tower).__name__}, not SigLIP"
        if type(llava.language_model) is not LlamaModel:
            return f"the language model is a {type(llava.language_model).__name__}, not Llama"
        for blocks, cls in (
            (llava.vision_tower.encoder.layers, SiglipEncoderLayer),
            (llava.language_model.layers, LlamaDecoderLayer),
        ):
            for block in blocks:
                if type(block) is not cls:
                    return f"a block is a {type(block).__name__} (sharded or wrapped), not {cls.__name__}"
        if not isinstance(config.vision_feature_layer, int):
            return "vision_feature_layer is a list (concatenated layers)"
        if config.vision_feature_select_strategy != "full":
            return f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}"
        text, vision = config.text_config, config.vision_config
        for part, part_config in (("text", text), ("vision", vision)):
            if part_config._attn_implementation != "sdpa":
                return f"{part} attention is {part_config._attn_implementation!r}, not 'sdpa'"
            if part_config.attention_dropout:
                return f"{part} attention_dropout={part_config.attention_dropout}"
        if text.num_key_value_heads != text.num_attention_heads:
            return "grouped-query attention (num_key_value_heads != num_attention_heads)"
        if text.rope_parameters.get("rope_type", "default") != "default":
            return f"rope_type={text.rope_parameters['rope_type']!r}"
        for name, act in (
            ("vision hidden_act", vision.hidden_act),
            ("projector_hidden_act", config.projector_hidden_act),
            ("text hidden_act", text.hidden_act),
        ):
            if act not in _ACTIVATIONS:
                return f"{name}={act!r} has no lean equivalent"
        stem = llava.vision_tower.embeddings.patch_embedding
        if type(stem) is nn.Conv2d and stem.padding_mode != "zeros":
            return "the patch embedding pads with something other than zeros"
        if type(stem) not in (nn.Conv2d, ConvPatchStem, FiLMConvPatchStem):
            return f"the patch embedding is a {type(stem).__name__}, not a Conv2d or (FiLM)ConvPatchStem"
        if getattr(llava.vision_tower, "use_head", False):
            return "the vision tower has a pooling head"
        linears = _linear_modules(model)
        for name, module in linears:
            reason = _linear_reason(name, module)
            if reason is not None:
                return reason
        known = {id(module) for _, module in linears}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and id(module) not in known:
                return f"{name} carries a LoRA adapter outside the linear layers"
        return None

    # ------------------------------------------------------------------ forward

    def accepts(self, attention_mask: torch.Tensor) -> bool:
        """Whether this call can take the lean path.

        It needs a prepared 4D bool mask, no gradient checkpointing, and blocks that are still
        the plain transformers classes: FSDP's ``fully_shard`` swaps a block's class and
        gathers its sharded weights in the block's forward, which the lean path never calls.
        """
        return (
            attention_mask.dim() == 4
            and attention_mask.dtype == torch.bool
            and not self._text.gradient_checkpointing
            and all(type(block) is cls for block, cls in self._blocks)
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L) ids, (B, 1, L, L) bool mask, (B, L) positions, (B, 3, h, w) pixels -> (B, L, H)."""
        embed = self._text.embed_tokens
        inputs_embeds = F.embedding(input_ids, embed.weight, embed.padding_idx)
        if pixel_values is not None:
            features = self._image_features(pixel_values, input_ids, inputs_embeds)
            features = features.reshape(-1, features.shape[-1]).to(
                inputs_embeds.device, inputs_embeds.dtype
            )
            image_mask = (input_ids == self._image_token_id).unsqueeze(-1)
            if image_mask.sum() * inputs_embeds.shape[-1] != features.numel():
                raise ValueError(
                    f"{int(image_mask.sum())} image tokens in the prompt but "
                    f"{features.shape[0]} image features; the prompt and image size disagree"
                )
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, features)
        return self._decoder(inputs_embeds, attention_mask, position_ids)

    def _image_features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, inputs_embeds: torch.Tensor
    ) -> torch.Tensor:
        embeddings = self._vision.embeddings
        conv = embeddings.patch_embedding
        pixels = pixel_values.to(dtype=conv.weight.dtype)
        if type(conv) is FiLMConvPatchStem:  # as FiLMLlavaModel.forward calls it
            text_mask = film_text_mask(self.model.config, input_ids)
            with conv.conditioned_on(conv.instruction_embedding(inputs_embeds, text_mask)):
                patches = conv(pixels)
        elif type(conv) is ConvPatchStem:  # convolutions and GELUs, as transformers calls them
            patches = conv(pixels)
        else:
            patches = F.conv2d(
                pixels,
                conv.weight,
                conv.bias,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
        hidden = patches.flatten(2).transpose(1, 2)
        table = embeddings.position_embedding
        hidden = hidden + F.embedding(embeddings.position_ids, table.weight, table.padding_idx)
        for block in self._vision.encoder.layers[: self._vision_blocks]:
            hidden = self._vision_block(block, hidden)
        projector = self._projector
        hidden = _linear(projector.linear_1, hidden)
        hidden = self._projector_act(hidden)
        return _linear(projector.linear_2, hidden)

    def _vision_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        attention = block.self_attn
        residual = hidden
        hidden = _layer_norm(block.layer_norm1, hidden)
        shape = hidden.shape[:-1]
        query, key, value = _heads(attention, hidden, attention.head_dim)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=None, dropout_p=0.0, scale=attention.scale, is_causal=False
        )
        out = out.transpose(1, 2).contiguous().reshape(*shape, -1)
        hidden = residual + _linear(attention.out_proj, out)
        residual = hidden
        hidden = _layer_norm(block.layer_norm2, hidden)
        mlp = block.mlp
        hidden = _linear(mlp.fc2, self._vision_act(_linear(mlp.fc1, hidden)))
        return residual + hidden

    def _decoder(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        rotary = self._text.rotary_emb
        freqs = position_ids[..., None].float() * rotary.inv_freq.to(
            device=hidden.device, dtype=torch.float
        )
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * rotary.attention_scaling).to(dtype=hidden.dtype).unsqueeze(1)
        sin = (angles.sin() * rotary.attention_scaling).to(dtype=hidden.dtype).unsqueeze(1)
        for block in self._text.layers:
            hidden = self._decoder_block(block, hidden, attention_mask, cos, sin)
        return _rms_norm(self._text.norm, hidden)

    def _decoder_block(
        self,
        block: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        attention = block.self_attn
        residual = hidden
        hidden = _rms_norm(block.input_layernorm, hidden)
        shape = hidden.shape[:-1]
        query, key, value = _heads(attention, hidden, self._text_head_dim)
        query = (query * cos) + (_rotate_half(query) * sin)
        key = (key * cos) + (_rotate_half(key) * sin)
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            scale=attention.scaling,
            is_causal=False,
        )
        out = out.transpose(1, 2).contiguous().reshape(*shape, -1)
        hidden = residual + _linear(attention.o_proj, out)
        residual = hidden
        hidden = _rms_norm(block.post_attention_layernorm, hidden)
        mlp = block.mlp
        gated = self._text_act(_linear(mlp.gate_proj, hidden)) * _linear(mlp.up_proj, hidden)
        return residual + _linear(mlp.down_proj, gated)


# ---------------------------------------------------------------------- functional pieces


def _linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every linear layer the lean forward calls, by its name in ``model``."""
    llava = model.model
    names = []
    stem = llava.vision_tower.embeddings.patch_embedding
    if type(stem) is FiLMConvPatchStem:  # called as modules by the stem itself, LoRA or not
        prefix = "model.vision_tower.embeddings.patch_embedding.film"
        names += [(f"{prefix}.{index}", layer) for index, layer in enumerate(stem.film)]
    for index, block in enumerate(llava.vision_tower.encoder.layers):
        prefix = f"model.vision_tower.encoder.layers.{index}"
        names += [(f"{prefix}.self_attn.{p}", getattr(block.self_attn, p)) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]  # fmt: skip
        names += [(f"{prefix}.mlp.{p}", getattr(block.mlp, p)) for p in ("fc1", "fc2")]
    projector = llava.multi_modal_projector
    names += [(f"model.multi_modal_projector.{p}", getattr(projector, p)) for p in ("linear_1", "linear_2")]  # fmt: skip
    for index, block in enumerate(llava.language_model.layers):
        prefix = f"model.language_model.layers.{index}"
        names += [(f"{prefix}.self_attn.{p}", getattr(block.self_attn, p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]  # fmt: skip
        names += [(f"{prefix}.mlp.{p}", getattr(block.mlp, p)) for p in ("gate_proj", "up_proj", "down_proj")]  # fmt: skip
    return names


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an nn.Linear or a plain peft LoRA Linear, as peft computes it."""
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    base = module.base_layer
    result = F.linear(x, base.weight, base.bias)
    if module.disable_adapters or module.merged:
        return result
    dtype = result.dtype
    for adapter in module.active_adapters:
        lora_a = module.lora_A[adapter].weight
        x = module._cast_input_dtype(x, lora_a.dtype)
        down = F.linear(x, lora_a)
        result = result + F.linear(down, module.lora_B[adapter].weight) * module.scaling[adapter]
    return result.to(dtype)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm: normalize in fp32, scale in the input dtype."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _heads(
    attention: nn.Module, hidden: torch.Tensor, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value projections of ``hidden`` as (batch, heads, tokens, head_dim)."""
    split = (*hidden.shape[:-1], -1, head_dim)
    return tuple(
        _linear(projection, hidden).view(split).transpose(1, 2)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
    )  # type: ignore[return-value]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
