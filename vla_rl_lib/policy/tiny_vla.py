"""A tiny Llava-style VLA built from transformers' own classes, with random weights.

No PyPI package ships VLM weights, so tests, CI and laptop runs use this
model. It is a real ``LlavaForConditionalGeneration`` (SigLIP vision tower,
GELU projector, Llama decoder) with a byte-level BPE tokenizer trained here,
whose last 256 ids are OpenVLA-style action bins. It saves with
``save_pretrained`` and loads back with ``AutoModelForImageTextToText`` /
``AutoProcessor.from_pretrained`` under ``HF_HUB_OFFLINE=1``, i.e. through the
same code path a downloaded checkpoint takes.

Design notes:
- ``vision_feature_layer=-1``: with Llava's usual -2 the last vision block
  never reaches the loss and its LoRA weights would stay dead.
- SigLIP has no CLS token, so the feature strategy is ``"full"``.
- ``padding_side="left"`` is passed to the tokenizer's constructor; set
  afterwards it is lost on save/load.
- The action ids are part of the BPE *model* vocabulary (not added tokens),
  so ``tokenizer.vocab_size`` is the end of the action range, as it is for
  OpenVLA's Llama tokenizer (32000). Just before them sit ``action_slots``
  placeholder tokens ``<action_slot_d>``: parallel decoding feeds slot d its
  own token. With one shared placeholder the slots differ only by RoPE
  position, and SFT on a fixed batch stalled near ln(32) (it could not tell
  the 8 slots apart); with distinct slot tokens it fell to 0.2 in 40 steps.
- The output head is initialized with std 1/sqrt(hidden) rather than the
  usual 0.02: with 0.02 a frozen random head (LoRA does not adapt it) spans
  logits of only about +-1.3, so a LoRA policy could never become confident
  (SFT loss stalled at 4.3 instead of falling to 0.2).
- ``vision_stem="conv"`` swaps SigLIP's one-layer patch projection for a small
  CNN (``ConvPatchStem``) with the same output grid, as robot-learning vision
  encoders do (robomimic, DrQ; Xiao et al. 2021, "Early convolutions help
  transformers see better"). transformers cannot build that module from a
  ``config.json`` (it would drop the CNN's weights with a warning and keep a
  fresh patch conv), so the saved config records the stem
  (``vision_config.vision_stem``) and such a model is a ``ConvStemLlava``, whose
  ``from_pretrained`` builds the stem before loading. A patch-stem model is the
  stock Llava, saved and loaded as before.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.siglip import SiglipImageProcessorPil

from vla_rl_lib.policy.action_tokenizer import N_ACTION_BINS

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE]  # ids 0..3
VISION_STEMS = ("patch", "conv")


@dataclass(frozen=True)
class TinyVLAConfig:
    """Sizes of the tiny VLA. Defaults: about 1M parameters, 64x64 images, 16 image tokens."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden_size: int = 96
    text_intermediate_size: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_vocab_size: int = 1024  # at most this many BPE entries before slots and action ids
    action_slots: int = 16  # distinct placeholder tokens for parallel decoding; >= action_dim
    max_position_embeddings: int = 512
    vision_stem: str = "patch"  # "patch": SigLIP's linear patch projection; "conv": ConvPatchStem

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TinyVLAConfig.image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}; choose sizes that tile the image."
            )
        if self.vision_stem not in VISION_STEMS:
            raise ValueError(
                f"TinyVLAConfig.vision_stem={self.vision_stem!r} is unknown; use one of {VISION_STEMS}."
            )
        if self.vision_stem == "conv" and not _is_power_of_two(self.patch_size):
            raise ValueError(
                f"TinyVLAConfig.patch_size={self.patch_size} must be a power of two (>= 2) with "
                "vision_stem='conv': each stride-2 convolution halves the image."
            )
        for hidden, heads, name in (
            (self.vision_hidden_size, self.vision_heads, "vision"),
            (self.text_hidden_size, self.text_heads, "text"),
        ):
            if hidden % heads:
                raise ValueError(
                    f"TinyVLAConfig.{name}_hidden_size={hidden} is not divisible by "
                    f"{name}_heads={heads}."
                )
        if self.text_vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(
                f"TinyVLAConfig.text_vocab_size={self.text_vocab_size} cannot hold the 256 byte "
                f"symbols and {len(SPECIAL_TOKENS)} special tokens; use at least 260."
            )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _is_power_of_two(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0


class ConvPatchStem(nn.Sequential):
    """3x3 stride-2 convolutions with GELU, then a 1x1 projection: pixels to the patch grid.

    (B, 3, S, S) -> (B, hidden, S / patch, S / patch), the shape of SigLIP's patch
    conv, so the tokens and everything after them are unchanged. log2(patch)
    convolutions with 32, 32, 64, 64, 128, ... channels; a 16-pixel patch takes four.
    """

    def __init__(self, in_channels: int, hidden: int, patch_size: int) -> None:
        if not _is_power_of_two(patch_size):
            raise ValueError(f"ConvPatchStem needs a power-of-two patch_size, got {patch_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for index in range(patch_size.bit_length() - 1):
            width = 32 * 2 ** (index // 2)
            conv = nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # scale kept through GELU
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.GELU()]
            channels = width
        projection = nn.Conv2d(channels, hidden, kernel_size=1)
        nn.init.normal_(projection.weight, std=channels**-0.5)  # SigLIP's LeCun-normal patch init
        nn.init.zeros_(projection.bias)
        super().__init__(*layers, projection)

    @property
    def weight(self) -> torch.Tensor:
        """The first convolution's weight: SigLIP casts the pixels to ``patch_embedding.weight.dtype``."""
        return self[0].weight


def instruction_corpus() -> list[str]:
    """Prompts the BPE tokenizer is trained on: OpenVLA's template around manipulation instructions."""
    verbs = [
        "pick up", "lift", "grasp", "grab", "raise", "push", "pull", "move", "place", "put",
        "stack", "open", "close", "turn", "slide", "rotate", "knock over", "hold", "drop", "reach",
    ]  # fmt: skip
    colors = [
        "red",
        "green",
        "blue",
        "yellow",
        "white",
        "black",
        "orange",
        "purple",
        "small",
        "large",
    ]
    objects = [
        "cube", "block", "cup", "bowl", "can", "bottle", "ball", "sponge", "drawer", "lid",
        "box", "spoon", "plate", "marker", "towel", "door", "handle", "object", "brick", "toy",
    ]  # fmt: skip
    places = [
        "", " on the table", " into the bowl", " onto the plate", " to the left", " to the right",
        " off the table", " into the box", " next to the cup", " above the table",
    ]  # fmt: skip
    corpus = []
    for verb, color, obj, place in itertools.product(verbs, colors, objects, places):
        instruction = f"{verb} the {color} {obj}{place}"
        corpus.append(f"In: What action should the robot take to {instruction}?\nOut:")
    return corpus


def action_slot_token(slot: int) -> str:
    return f"<action_slot_{slot}>"


def build_tokenizer(text_vocab_size: int = 1024, action_slots: int = 16) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``instruction_corpus()``, then slot tokens and 256 action ids."""
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(instruction_corpus(), trainer)

    # Re-create the BPE model with the action symbols as the last 256 vocabulary entries:
    # no merge produces them, so text never tokenizes into an action id.
    model_json = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(merge) for merge in model_json["merges"]]
    for slot in range(action_slots):
        vocab[action_slot_token(slot)] = len(vocab)
    for index in range(N_ACTION_BINS):
        vocab[f"<action_{index}>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    bos_id = vocab[BOS]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=1 << 30,
    )


def build_processor(config: TinyVLAConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = SiglipImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="full",
        image_token=IMAGE,
        num_additional_image_tokens=0,
    )


def _tower(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, int]:
    """The four sizes a transformers vision or text config names alike."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }


def llava_config(config: TinyVLAConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = SiglipVisionConfig(
        **_tower(config.vision_hidden_size, config.vision_intermediate_size, config.vision_layers,
                 config.vision_heads),
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_use_head=False,
    )  # fmt: skip
    if config.vision_stem != "patch":  # a patch-stem config.json stays as it always was
        vision.vision_stem = config.vision_stem
    text = LlamaConfig(
        **_tower(config.text_hidden_size, config.text_intermediate_size, config.text_layers,
                 config.text_heads),
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=False,
        vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=config.image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )


def build_tiny_vla(
    config: TinyVLAConfig | None = None, seed: int = 0
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A fresh random-weight tiny VLA and its processor; the same seed gives the same weights."""
    config = config or TinyVLAConfig()
    tokenizer = build_tokenizer(config.text_vocab_size, config.action_slots)
    processor = build_processor(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_llava(llava_config(config, tokenizer))
        nn.init.normal_(model.lm_head.weight, std=config.text_hidden_size**-0.5)
    model.eval()
    return model, processor


def vision_stem_of(config: Any) -> str:
    """The vision stem a (saved) model config records; "patch" when it names none."""
    stem = getattr(getattr(config, "vision_config", None), "vision_stem", "patch")
    if stem not in VISION_STEMS:
        raise ValueError(
            f"vision_config.vision_stem={stem!r} is unknown; expected one of {VISION_STEMS}"
        )
    return stem


class ConvStemLlava(LlavaForConditionalGeneration):
    """The tiny VLA with a ``ConvPatchStem`` in place of SigLIP's patch conv.

    The stem is built in ``__init__``, so ``ConvStemLlava.from_pretrained`` loads its
    saved weights through transformers' own loader (key renames, dtype, loading info).
    It replaces the patch conv after transformers' initialization: a patch-stem model
    draws exactly the random numbers it always did.
    """

    def __init__(self, config: LlavaConfig) -> None:
        if vision_stem_of(config) != "conv":
            raise ValueError("ConvStemLlava needs a config with vision_config.vision_stem='conv'")
        super().__init__(config)
        vision = config.vision_config
        self.model.vision_tower.embeddings.patch_embedding = ConvPatchStem(
            vision.num_channels, vision.hidden_size, vision.patch_size
        )


def tiny_llava(config: LlavaConfig) -> LlavaForConditionalGeneration:
    """The model ``config`` describes, its vision stem included, with random weights."""
    return (
        ConvStemLlava(config)
        if vision_stem_of(config) == "conv"
        else LlavaForConditionalGeneration(config)
    )
