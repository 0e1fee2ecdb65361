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
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass

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

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TinyVLAConfig.image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}; choose sizes that tile the image."
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

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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
        model = LlavaForConditionalGeneration(llava_config(config, tokenizer))
        nn.init.normal_(model.lm_head.weight, std=config.text_hidden_size**-0.5)
    model.eval()
    return model, processor
