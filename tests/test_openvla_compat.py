"""Each OpenVLA compatibility patch, against stand-ins that reproduce the transformers 4.40-era API.

The real remote code needs timm 0.9 (which imports torchvision, unavailable
here), so these classes copy just the shapes that break: a Prismatic-like
model whose ``_supports_sdpa`` property reads ``self.language_model``, whose
``tie_weights`` takes no arguments, which lacks ``GenerationMixin``, and whose
output dataclass declares ``past_key_values``.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GenerationMixin,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast, ModelOutput

from vla_rl_lib.policy import openvla_compat
from vla_rl_lib.policy.openvla_compat import (
    align_text_config_dtype,
    apply_openvla_patches,
    patch_generation_mixin,
    patch_output_class,
    patch_prepare_inputs_for_generation,
    patch_supports_sdpa,
    patch_tie_weights,
    patch_tokenization_utils_imports,
)

TINY_LLAMA = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


class StandInConfig(PretrainedConfig):
    model_type = "standin_prismatic"

    def __init__(self, text_config: dict | None = None, **kwargs) -> None:
        self.text_config = LlamaConfig(**(text_config or TINY_LLAMA))
        super().__init__(**kwargs)


def make_old_api_model_class() -> type[PreTrainedModel]:
    """A fresh Prismatic-like class with every 4.40-era breakage (fresh, so patches don't leak)."""

    class StandInPreTrainedModel(PreTrainedModel):
        config_class = StandInConfig
        base_model_prefix = "model"

        @property
        def _supports_sdpa(self) -> bool:
            return self.language_model._supports_sdpa

    class StandInForActionPrediction(StandInPreTrainedModel):
        def __init__(self, config: StandInConfig) -> None:
            super().__init__(config)
            self.projector = nn.Linear(4, config.text_config.hidden_size)
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
            self.post_init()

        def tie_weights(self) -> None:
            self.language_model.tie_weights()

        def prepare_inputs_for_generation(self, input_ids=None, past_key_values=None, **kwargs):
            if past_key_values is not None:
                input_ids = input_ids[:, -1:]
            return {"input_ids": input_ids, "past_key_values": past_key_values}

    return StandInForActionPrediction


def make_old_output_module() -> types.ModuleType:
    module = types.ModuleType("standin_modeling_prismatic")

    @dataclass
    class PrismaticCausalLMOutputWithPast(ModelOutput):
        """Old-style output: declares past_key_values."""

        loss: torch.Tensor | None = None
        logits: torch.Tensor = None
        past_key_values: tuple | None = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None
        projector_features: torch.Tensor | None = None

    PrismaticCausalLMOutputWithPast.__module__ = module.__name__
    module.PrismaticCausalLMOutputWithPast = PrismaticCausalLMOutputWithPast
    return module


def test_supports_sdpa_property_breaks_init_and_the_patch_fixes_it():
    model_cls = make_old_api_model_class()
    with pytest.raises(AttributeError, match="_supports_sdpa"):
        model_cls(StandInConfig())
    assert patch_supports_sdpa(model_cls) is True
    patch_tie_weights(model_cls)  # post_init calls tie_weights with the new keywords
    model = model_cls(StandInConfig())
    assert model._supports_sdpa is True
    assert model.config._attn_implementation == "sdpa"
    assert patch_supports_sdpa(model_cls) is False


def test_tie_weights_accepts_transformers_5_keywords():
    model_cls = make_old_api_model_class()
    patch_supports_sdpa(model_cls)
    # post_init calls tie_weights(recompute_mapping=False): the old signature fails at construction.
    with pytest.raises(TypeError, match="recompute_mapping"):
        model_cls(StandInConfig())
    assert patch_tie_weights(model_cls) is True
    model = model_cls(StandInConfig())
    model.tie_weights(missing_keys=set(), recompute_mapping=False)
    model.tie_weights()
    assert patch_tie_weights(model_cls) is False


def test_tie_weights_still_ties_the_language_model_when_its_config_asks():
    model_cls = make_old_api_model_class()
    patch_supports_sdpa(model_cls)
    patch_tie_weights(model_cls)
    model = model_cls(StandInConfig(text_config={**TINY_LLAMA, "tie_word_embeddings": True}))
    model.tie_weights()
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


def test_tie_weights_patch_leaves_a_compatible_signature_alone():
    class Compatible(PreTrainedModel):
        config_class = StandInConfig

    assert patch_tie_weights(Compatible) is False
    assert "tie_weights" not in Compatible.__dict__


def test_generation_mixin_is_mixed_back_in():
    model_cls = make_old_api_model_class()
    assert not model_cls.can_generate()
    assert patch_generation_mixin(model_cls) is True
    assert issubclass(model_cls, GenerationMixin)
    assert model_cls.can_generate()
    assert model_cls.__mro__.index(PreTrainedModel) < model_cls.__mro__.index(GenerationMixin)
    assert patch_generation_mixin(model_cls) is False


def test_old_output_class_rejects_cache_and_the_rebuilt_one_carries_it():
    module = make_old_output_module()
    cache = DynamicCache()
    # transformers 5 renames the past_key_values= keyword to cache=, which the old class lacks.
    with pytest.raises(TypeError, match="cache"):
        module.PrismaticCausalLMOutputWithPast(logits=torch.zeros(1), past_key_values=cache)

    assert patch_output_class(module) is True
    new_cls = module.PrismaticCausalLMOutputWithPast
    assert issubclass(new_cls, CausalLMOutputWithPast)
    assert {f.name for f in dataclasses.fields(new_cls)} >= {
        "cache",
        "logits",
        "projector_features",
    }
    features = torch.ones(1, 2, 3)
    out = new_cls(logits=torch.zeros(1), past_key_values=cache, projector_features=features)
    assert out["cache"] is cache
    assert out.past_key_values is cache
    assert out.projector_features is features
    assert patch_output_class(module) is False
    assert module.PrismaticCausalLMOutputWithPast is new_cls


def test_output_class_patch_names_a_module_that_is_not_openvla():
    with pytest.raises(AttributeError, match="PrismaticCausalLMOutputWithPast"):
        patch_output_class(types.ModuleType("not_openvla"))


def _filled_cache(length: int) -> DynamicCache:
    config = LlamaConfig(**TINY_LLAMA)
    cache = DynamicCache(config=config)
    key = torch.zeros(1, 2, length, 8)
    cache.update(key, key.clone(), layer_idx=0)
    return cache


def test_prepare_inputs_reads_cache_keyword():
    model_cls = make_old_api_model_class()
    input_ids = torch.tensor([[1, 5, 6, 7]])
    filled = _filled_cache(4)
    # The old method ignores cache= (it lands in **kwargs): the prompt is never trimmed.
    old = model_cls.prepare_inputs_for_generation(None, input_ids, cache=filled)
    assert old["input_ids"].shape[1] == 4 and old["past_key_values"] is None

    assert patch_prepare_inputs_for_generation(model_cls) is True
    pixel_values = torch.zeros(1, 3, 8, 8)
    step = model_cls.prepare_inputs_for_generation(
        None, input_ids, cache=filled, pixel_values=pixel_values, use_cache=True
    )
    assert step["input_ids"].tolist() == [[7]]
    assert step["past_key_values"] is filled
    assert step["pixel_values"] is pixel_values and step["use_cache"] is True

    # transformers 5 creates an empty cache before the first step; OpenVLA's multimodal
    # forward asserts that no cache comes with the image, so it is sent as None.
    first = model_cls.prepare_inputs_for_generation(None, input_ids, cache=DynamicCache())
    assert first["input_ids"].shape[1] == 4 and first["past_key_values"] is None
    assert patch_prepare_inputs_for_generation(model_cls) is False


def test_prepare_inputs_keeps_openvla_batch_size_one_limit():
    model_cls = make_old_api_model_class()
    patch_prepare_inputs_for_generation(model_cls)
    with pytest.raises(ValueError, match="one prompt at a time"):
        model_cls.prepare_inputs_for_generation(None, torch.ones(2, 3, dtype=torch.long))


def test_tokenization_utils_imports_are_restored(monkeypatch):
    legacy = importlib.import_module(openvla_compat.LEGACY_TOKENIZATION_MODULE)
    for name in openvla_compat.LEGACY_TOKENIZATION_NAMES:
        if name in vars(legacy):
            monkeypatch.delattr(legacy, name)
    with pytest.raises(ImportError, match="PaddingStrategy"):
        exec("from transformers.tokenization_utils import PaddingStrategy", {})

    assert patch_tokenization_utils_imports() is True
    namespace: dict = {}
    exec(
        "from transformers.tokenization_utils import "
        "PaddingStrategy, PreTokenizedInput, TextInput, TruncationStrategy",
        namespace,
    )
    from transformers import tokenization_utils_base

    assert namespace["PaddingStrategy"] is tokenization_utils_base.PaddingStrategy
    assert patch_tokenization_utils_imports() is False


def test_tokenization_utils_module_is_registered_when_not_importable(monkeypatch):
    name = openvla_compat.LEGACY_TOKENIZATION_MODULE
    monkeypatch.delitem(sys.modules, name, raising=False)
    real_import = importlib.import_module

    def failing_import(module_name, *args, **kwargs):
        if module_name == name:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(module_name, *args, **kwargs)

    monkeypatch.setattr(openvla_compat.importlib, "import_module", failing_import)
    assert patch_tokenization_utils_imports() is True
    assert hasattr(sys.modules[name], "TruncationStrategy")


def test_text_config_dtype_follows_the_requested_dtype():
    config = StandInConfig()
    config.text_config.dtype = torch.bfloat16
    assert align_text_config_dtype(config, torch.float32) is True
    assert config.text_config.dtype == torch.float32
    assert align_text_config_dtype(config, torch.float32) is False
    with pytest.raises(AttributeError, match="text_config"):
        align_text_config_dtype(PretrainedConfig(), torch.float32)


def test_apply_openvla_patches_is_idempotent_and_yields_a_working_generator():
    model_cls = make_old_api_model_class()
    module = make_old_output_module()
    sys.modules[module.__name__] = module
    model_cls.__module__ = module.__name__
    try:
        first = apply_openvla_patches(model_cls)
        assert all(
            first[k] for k in ("supports_sdpa", "tie_weights", "generation_mixin", "output_class")
        )
        assert first["prepare_inputs_for_generation"]
        assert not any(apply_openvla_patches(model_cls).values())
        model = model_cls(StandInConfig())
        assert model.can_generate() and model.generation_config is not None
    finally:
        del sys.modules[module.__name__]
