"""Run OpenVLA's remote code (written for transformers 4.40) on transformers 5.24.

OpenVLA ships its model as "remote code": ``configuration_prismatic.py``,
``modeling_prismatic.py`` and ``processing_prismatic.py`` next to the weights,
loaded with ``trust_remote_code``. That code targets transformers 4.40.1 and
breaks on transformers 5 in exactly the places patched here, one function per
breakage:

========================================  ==========================================
what broke                                patch
========================================  ==========================================
``AutoModelForVision2Seq`` is gone        :func:`load_remote_class`
``_supports_sdpa`` property fails early   :func:`patch_supports_sdpa`
``tie_weights()`` gets new keywords       :func:`patch_tie_weights`
no ``GenerationMixin`` in the bases       :func:`patch_generation_mixin`
output class declares ``past_key_values`` :func:`patch_output_class`
``prepare_inputs_for_generation``         :func:`patch_prepare_inputs_for_generation`
processor imports ``tokenization_utils``  :func:`patch_tokenization_utils_imports`
``text_config`` dtype not propagated      :func:`align_text_config_dtype`
========================================  ==========================================

Nothing else is changed: the forward pass, the vision backbone, the weights
and the processor's image transform are OpenVLA's own. Every patch checks
whether it is still needed and does nothing otherwise, so applying twice (or
to code that was already fixed upstream) is harmless.

:func:`apply_openvla_patches` applies them all to a loaded model class; call
it before the processor module is imported (it fixes the processor's imports),
and :func:`align_text_config_dtype` on the config before ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.modeling_outputs import CausalLMOutputWithPast

# The module that OpenVLA's processor imports from, and the names it takes.
LEGACY_TOKENIZATION_MODULE = "transformers.tokenization_utils"
LEGACY_TOKENIZATION_NAMES = (
    "PaddingStrategy",
    "PreTokenizedInput",
    "TextInput",
    "TruncationStrategy",
)

# Name of the output dataclass in OpenVLA's modeling_prismatic.py.
PRISMATIC_OUTPUT_CLASS = "PrismaticCausalLMOutputWithPast"

# Set on every function/class this module installs, so a second application is a no-op.
_PATCH_MARKER = "_vla_rl_openvla_patch"


def _mark(obj: Any) -> Any:
    setattr(obj, _PATCH_MARKER, True)
    return obj


def _is_patched(obj: Any) -> bool:
    return bool(getattr(obj, _PATCH_MARKER, False))


def load_remote_class(class_reference: str, checkpoint_dir: str | Path) -> type:
    """Import ``module.Class`` from the remote code stored in ``checkpoint_dir``.

    What broke: OpenVLA's ``config.json`` maps its model class under
    ``auto_map["AutoModelForVision2Seq"]`` and its README loads it with
    ``AutoModelForVision2Seq.from_pretrained(..., trust_remote_code=True)``.
    transformers 5 removed ``AutoModelForVision2Seq``, so the auto class that
    would read that entry no longer exists. We import the class directly with
    ``get_class_from_dynamic_module``, which is what the auto class did
    internally, from local files only (the caller has already checked that the
    checkpoint is allowed to run code).
    """
    return get_class_from_dynamic_module(
        class_reference, str(checkpoint_dir), local_files_only=True
    )


def patch_supports_sdpa(model_cls: type[PreTrainedModel]) -> bool:
    """Replace the ``_supports_sdpa`` property with a class attribute.

    What broke: ``PrismaticPreTrainedModel._supports_sdpa`` is a property that
    returns ``self.language_model._supports_sdpa``. transformers 5 reads
    ``_supports_sdpa`` inside ``PreTrainedModel.__init__`` (choosing the
    attention implementation) before the subclass has created
    ``self.language_model``, so the property raises ``AttributeError``.
    OpenVLA's language model is Llama-2, whose attention supports SDPA, so the
    value the property would have returned is ``True``; we set that on the
    class, which shadows the inherited property.

    Returns True if the class was changed.
    """
    if not isinstance(inspect.getattr_static(model_cls, "_supports_sdpa", None), property):
        return False
    model_cls._supports_sdpa = True
    return True


def _tie_weights_accepts_keywords(method: Any) -> bool:
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return {"missing_keys", "recompute_mapping"} <= parameters.keys()


def patch_tie_weights(model_cls: type[PreTrainedModel]) -> bool:
    """Let ``tie_weights`` accept the keywords transformers 5 passes.

    What broke: OpenVLA overrides ``tie_weights(self)`` to forward the call to
    its language model. transformers 5 calls
    ``model.tie_weights(missing_keys=..., recompute_mapping=False)`` while
    loading, which raises ``TypeError`` on the old signature. The replacement
    defers to ``PreTrainedModel.tie_weights``, which in transformers 5 walks
    every sub-model (the language model included) and ties what each one's
    config asks for, which is what the override meant to do (for Llama-2 it
    ties nothing: ``tie_word_embeddings`` is false).

    Returns True if the class was changed.
    """
    if _tie_weights_accepts_keywords(model_cls.tie_weights):
        return False

    def tie_weights(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        return PreTrainedModel.tie_weights(self, *args, **kwargs)

    model_cls.tie_weights = _mark(tie_weights)
    return True


def patch_generation_mixin(model_cls: type[PreTrainedModel]) -> bool:
    """Add ``GenerationMixin`` back to the model's bases.

    What broke: up to transformers 4.49 every ``PreTrainedModel`` inherited
    ``GenerationMixin``; OpenVLA relies on that for ``generate`` (used by its
    ``predict_action``). In transformers 5 a model class must list it itself,
    otherwise ``generate`` does not exist and ``can_generate()`` is False (so no
    ``generation_config`` is loaded). We append it to the class's own bases,
    the position the transformers docs ask for (after ``PreTrainedModel``).

    Returns True if the class was changed.
    """
    if issubclass(model_cls, GenerationMixin):
        return False
    model_cls.__bases__ = (*model_cls.__bases__, GenerationMixin)
    return True


def patch_output_class(
    modeling_module: types.ModuleType, class_name: str = PRISMATIC_OUTPUT_CLASS
) -> bool:
    """Rebuild the model's output dataclass on top of ``CausalLMOutputWithPast``.

    What broke: OpenVLA's forward returns
    ``PrismaticCausalLMOutputWithPast(past_key_values=..., ...)``, a
    ``ModelOutput`` that declares a ``past_key_values`` field. transformers 5
    renamed the cache to ``cache``: every ``ModelOutput.__init__`` renames the
    ``past_key_values=`` keyword to ``cache=``, which the old dataclass does not
    declare (``TypeError``), and ``generate`` reads ``outputs["cache"]`` to carry
    the KV cache to the next step. The replacement subclasses
    ``CausalLMOutputWithPast`` (which declares ``cache`` and keeps
    ``.past_key_values`` as a read alias) and keeps the old class's extra
    fields (``projector_features``). The forward looks the class up in its
    module's globals at call time, so replacing the module attribute suffices.

    Returns True if the module was changed.
    """
    old_cls = getattr(modeling_module, class_name, None)
    if old_cls is None:
        raise AttributeError(
            f"{modeling_module.__name__} has no class {class_name!r}: this is not the OpenVLA "
            "modeling_prismatic.py these patches were written for. Check the checkpoint's remote code."
        )
    if issubclass(old_cls, CausalLMOutputWithPast):
        return False
    inherited = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} | {"past_key_values"}
    extra_fields = [
        (f.name, f.type, dataclasses.field(default=None))
        for f in dataclasses.fields(old_cls)
        if f.name not in inherited
    ]
    new_cls = dataclasses.make_dataclass(
        class_name,
        extra_fields,
        bases=(CausalLMOutputWithPast,),
        namespace={"__doc__": old_cls.__doc__, "__module__": old_cls.__module__},
    )
    setattr(modeling_module, class_name, _mark(new_cls))
    return True


def _prepare_inputs_for_generation(
    self: PreTrainedModel,
    input_ids: torch.Tensor,
    cache: Any = None,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """OpenVLA's ``prepare_inputs_for_generation``, reading the cache as ``cache``.

    Same contract as the original: batch size 1 only (OpenVLA's forward asserts
    it on cached steps); the first step sends the whole prompt with the image
    and no cache, later steps send only the newest token with the cache.
    """
    if input_ids.shape[0] > 1:
        raise ValueError(
            f"OpenVLA's remote code generates for one prompt at a time; got a batch of {input_ids.shape[0]}. "
            "Call generate once per sample."
        )
    if inputs_embeds is not None:
        raise ValueError(
            "OpenVLA's forward needs input_ids and pixel_values; generating from inputs_embeds is unsupported."
        )
    cache = cache if cache is not None else past_key_values
    # transformers 5 creates an empty DynamicCache before the first step; OpenVLA's multimodal
    # forward asserts that no cache is passed with the image, so an empty cache is sent as None
    # and the language model creates its own (returned as outputs.cache for the next step).
    has_past = cache is not None and cache.get_seq_length() > 0
    if has_past:
        input_ids = input_ids[:, -1:]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "past_key_values": cache if has_past else None,
        "use_cache": kwargs.get("use_cache"),
    }


def patch_prepare_inputs_for_generation(model_cls: type[PreTrainedModel]) -> bool:
    """Make ``prepare_inputs_for_generation`` read the KV cache from ``cache``.

    What broke: ``generate`` in transformers 5 passes the KV cache as
    ``cache=`` (it used to be ``past_key_values=``). OpenVLA's method takes
    ``past_key_values`` and swallows unknown keywords, so it always sees
    ``None``: it never trims the prompt to the newest token and never forwards
    the cache, and every decoding step re-runs the vision backbone and the full
    prompt. Nothing fails, generation is just about 7x slower. The
    replacement reads ``cache`` (or ``past_key_values``), treats the empty cache
    transformers 5 creates before the first step as "no cache yet", and
    otherwise keeps the original's behaviour and its batch-size-1 limit.

    Returns True if the class was changed.
    """
    current = getattr(model_cls, "prepare_inputs_for_generation", None)
    if current is None or _is_patched(current):
        return False
    if "cache" in inspect.signature(current).parameters:
        return False
    model_cls.prepare_inputs_for_generation = _mark(_prepare_inputs_for_generation)
    return True


def patch_tokenization_utils_imports() -> bool:
    """Make ``from transformers.tokenization_utils import PaddingStrategy, ...`` work again.

    What broke: ``processing_prismatic.py`` does
    ``from transformers.tokenization_utils import PaddingStrategy,
    PreTokenizedInput, TextInput, TruncationStrategy``. In transformers 4.x
    that module re-exported these names from ``tokenization_utils_base``. In
    transformers 5.24 ``transformers.tokenization_utils`` is a legacy alias of
    ``tokenization_utils_sentencepiece``, which does not export them, so the
    processor fails at import with ``ImportError: cannot import name
    'PaddingStrategy'``. The processor file is re-copied from the checkpoint on
    every load, so rewriting its source would not stick; instead we add the
    missing names, taken from ``transformers.tokenization_utils_base`` where
    they live now, to the module the processor imports from (registering that
    module first if it cannot be imported at all).

    Returns True if a name was added.
    """
    try:
        legacy = importlib.import_module(LEGACY_TOKENIZATION_MODULE)
    except ImportError:
        legacy = types.ModuleType(
            LEGACY_TOKENIZATION_MODULE,
            "Stand-in for the transformers 4.x module, for OpenVLA's processor "
            "(registered by vla_rl_lib.policy.openvla_compat).",
        )
        sys.modules[LEGACY_TOKENIZATION_MODULE] = legacy
    missing = [name for name in LEGACY_TOKENIZATION_NAMES if name not in vars(legacy)]
    if not missing:
        return False
    from transformers import tokenization_utils_base

    for name in missing:
        setattr(legacy, name, getattr(tokenization_utils_base, name))
    return True


def align_text_config_dtype(config: Any, dtype: torch.dtype) -> bool:
    """Give OpenVLA's ``text_config`` the dtype the model is loaded in.

    What broke: OpenVLA builds its language model inside ``__init__`` with
    ``AutoModelForCausalLM.from_config(config.text_config)``. In transformers 5
    ``from_config`` creates the weights in ``text_config.dtype`` when that is set,
    and ``from_pretrained(dtype=...)`` only propagates its dtype to sub-configs
    that the config class declares in ``sub_configs``, which 4.40-era configs do
    not. A ``text_config`` that records ``torch_dtype: bfloat16`` therefore
    yields a bf16 language model next to a vision backbone in the requested
    dtype, and the first matmul fails with a dtype mismatch. Call this on the
    loaded config and pass it to ``from_pretrained(config=...)``.

    Returns True if the dtype was changed.
    """
    text_config = getattr(config, "text_config", None)
    if text_config is None:
        raise AttributeError(
            f"{type(config).__name__} has no text_config: this is not an OpenVLA/Prismatic config. "
            "Check the checkpoint's config.json."
        )
    if text_config.dtype == dtype:
        return False
    text_config.dtype = dtype
    return True


def apply_openvla_patches(model_cls: type[PreTrainedModel]) -> dict[str, bool]:
    """Apply every patch to OpenVLA's model class (and its module) in place.

    Call it after :func:`load_remote_class` has imported the model class and
    before ``from_pretrained`` and before the processor module is imported.
    Returns which patches changed something (all False on a second call).
    """
    modeling_module = sys.modules[model_cls.__module__]
    return {
        "tokenization_utils_imports": patch_tokenization_utils_imports(),
        "supports_sdpa": patch_supports_sdpa(model_cls),
        "tie_weights": patch_tie_weights(model_cls),
        "generation_mixin": patch_generation_mixin(model_cls),
        "output_class": patch_output_class(modeling_module),
        "prepare_inputs_for_generation": patch_prepare_inputs_for_generation(model_cls),
    }
