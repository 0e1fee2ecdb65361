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
- ``vision_film=True`` (conv stem only) conditions that CNN on the instruction, as
  RT-1's FiLM-EfficientNet and BC-Z do: each conv's output is scaled and shifted,
  ``h * (1 + gamma(e)) + beta(e)`` before its GELU, by linear maps of ``e``, the
  layer-normed mean of the decoder's input embeddings over the prompt's text tokens
  (``FiLMConvPatchStem``). Without it the SFT policy ignored the instruction (loss
  with the cube's colour swapped equal to 3 decimals); with it the image tokens
  themselves can depend on which cube is named. gamma and beta start at zero, so the
  model starts as the plain conv stem, and its draws of random numbers are the same.
  The saved config records it (``vision_config.vision_film`` and
  ``film_text_id_end``, the first non-text id) and a ``FiLMLlavaModel`` forward
  hands the prompt's embeddings to the stem.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
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
    vision_film: bool = False  # conv stem only: FiLM-condition its convolutions on the instruction

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
        if self.vision_film and self.vision_stem != "conv":
            raise ValueError(
                f"TinyVLAConfig.vision_film=True needs vision_stem='conv' (got {self.vision_stem!r}): "
                "FiLM modulates the conv stem's convolutions."
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

    def to_dict(self) -> dict[str, int | str | bool]:
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


class FiLMConvPatchStem(nn.Module):
    """A ``ConvPatchStem`` whose convolutions are FiLM-modulated by an instruction embedding.

    After each stride-2 convolution, before its GELU: ``h * (1 + gamma(e)) + beta(e)``,
    one ``nn.Linear(text_hidden, 2 * channels)`` per convolution giving gamma and beta,
    initialized to zero (the stem starts as the unconditioned one; nothing here draws
    random numbers). ``e = LayerNorm(mean of the prompt's text-token embeddings)``
    (``instruction_embedding``); the layer norm keeps e at unit scale, where the
    decoder's embeddings start at std 0.02. The mean ignores word order: "the red cube
    on the green plate" and "the green cube on the red plate" give the same e (the scene
    tells them apart, one of the two colours being a cube's), so a held-out loss with the
    two colours exchanged cannot show what FiLM does; replace a colour to see it.

    SigLIP calls the stem with the pixels alone, so the embedding is handed over by
    ``conditioned_on(e)`` around the vision forward; called outside it, the stem refuses.
    """

    def __init__(self, in_channels: int, hidden: int, patch_size: int, text_hidden: int) -> None:
        super().__init__()
        self.convs = ConvPatchStem(in_channels, hidden, patch_size)
        widths = [m.out_channels for m in list(self.convs)[:-1] if isinstance(m, nn.Conv2d)]
        self.instruction_norm = nn.LayerNorm(text_hidden)
        # skip_init: nn.Linear's own init would draw random numbers only to be zeroed
        self.film = nn.ModuleList(
            nn.utils.skip_init(nn.Linear, text_hidden, 2 * width) for width in widths
        )
        for layer in self.film:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self._instruction: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The first convolution's weight: SigLIP casts the pixels to ``patch_embedding.weight.dtype``."""
        return self.convs.weight

    def instruction_embedding(
        self, token_embeddings: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, H) decoder input embeddings, (B, L) bool text positions -> e, (B, H)."""
        weights = text_mask.to(token_embeddings.dtype).unsqueeze(-1)
        mean = (token_embeddings * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.instruction_norm(mean)

    @contextmanager
    def conditioned_on(self, instruction: torch.Tensor) -> Iterator[None]:
        """Run the stem on ``instruction`` (B, H), one row per image, inside this block."""
        self._instruction = instruction
        try:
            yield
        finally:
            self._instruction = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        instruction = self._instruction
        if instruction is None:
            raise RuntimeError(
                "FiLMConvPatchStem was called without an instruction; run the vision tower "
                "inside patch_embedding.conditioned_on(e) (FiLMLlavaModel.forward does)"
            )
        if instruction.shape[0] != pixels.shape[0]:
            raise ValueError(
                f"{pixels.shape[0]} images but {instruction.shape[0]} instructions; give one per image"
            )
        hidden = pixels
        film = iter(self.film)
        for module in self.convs:
            if isinstance(module, nn.GELU):
                gamma, beta = next(film)(instruction).to(hidden.dtype)[:, :, None, None].chunk(2, 1)
                hidden = hidden * (1 + gamma) + beta
            hidden = module(hidden)
        return hidden


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
    if config.vision_film:  # so does a conv-stem one without FiLM
        vision.vision_film = True
        vision.film_text_id_end = tokenizer.convert_tokens_to_ids(action_slot_token(0))
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


def vision_film_of(config: Any) -> bool:
    """Whether a (saved) model config records a FiLM-conditioned conv stem; False when it names none."""
    vision = getattr(config, "vision_config", None)
    film = getattr(vision, "vision_film", False)
    if film not in (True, False):
        raise ValueError(f"vision_config.vision_film={film!r} must be true or false")
    if film and vision_stem_of(config) != "conv":
        raise ValueError(
            f"vision_config.vision_film=true needs vision_config.vision_stem='conv', "
            f"not {vision_stem_of(config)!r}"
        )
    if film and not isinstance(getattr(vision, "film_text_id_end", None), int):
        raise ValueError(
            "vision_config.vision_film=true needs an int vision_config.film_text_id_end"
        )
    return bool(film)


def film_text_mask(config: LlavaConfig, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> bool, True on the prompt's text tokens: not padding, image, slot or action ids."""
    return (
        (input_ids < config.vision_config.film_text_id_end)
        & (input_ids != config.text_config.pad_token_id)
        & (input_ids != config.image_token_id)
    )


class FiLMLlavaModel(LlavaModel):
    """Llava's forward, with the image features of a ``FiLMConvPatchStem`` conditioned on ``input_ids``.

    ``LlavaModel.forward`` computes the image features from the pixels alone; here they
    are computed first, inside the stem's ``conditioned_on``, and handed to it as
    ``mm_encoder_outputs``. Calls without pixels (a cached decoding step) are Llava's.
    The instruction embedding is taken from the embedding table here, so gradients
    reach the text embeddings through the stem as well as through the decoder.
    """

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if pixel_values is None:
            return super().forward(input_ids=input_ids, **kwargs)
        if input_ids is None:
            raise ValueError(
                "a FiLM vision stem needs input_ids (not inputs_embeds) with the pixels"
            )
        stem = self.vision_tower.embeddings.patch_embedding
        text_mask = film_text_mask(self.config, input_ids)
        instruction = stem.instruction_embedding(self.get_input_embeddings()(input_ids), text_mask)
        with stem.conditioned_on(instruction):
            image_outputs = self.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=kwargs.pop("vision_feature_layer", None),
                vision_feature_select_strategy=kwargs.pop("vision_feature_select_strategy", None),
                image_sizes=kwargs.pop("image_sizes", None),
                return_dict=True,
            )
        return super().forward(
            input_ids=input_ids, mm_encoder_outputs={"image": image_outputs}, **kwargs
        )


class ConvStemLlava(LlavaForConditionalGeneration):
    """The tiny VLA with a ``ConvPatchStem`` (or ``FiLMConvPatchStem``) in place of SigLIP's patch conv.

    The stem is built in ``__init__``, so ``ConvStemLlava.from_pretrained`` loads its
    saved weights through transformers' own loader (key renames, dtype, loading info).
    It replaces the patch conv after transformers' initialization: a patch-stem model
    draws exactly the random numbers it always did, and a FiLM one those of the conv stem.
    """

    def __init__(self, config: LlavaConfig) -> None:
        if vision_stem_of(config) != "conv":
            raise ValueError("ConvStemLlava needs a config with vision_config.vision_stem='conv'")
        film = vision_film_of(config)
        super().__init__(config)
        vision = config.vision_config
        sizes = (vision.num_channels, vision.hidden_size, vision.patch_size)
        embeddings = self.model.vision_tower.embeddings
        if film:
            embeddings.patch_embedding = FiLMConvPatchStem(*sizes, config.text_config.hidden_size)
            # LlavaForConditionalGeneration builds a plain LlavaModel; FiLMLlavaModel adds no
            # state, only the forward that passes the prompt to the stem.
            self.model.__class__ = FiLMLlavaModel
        else:
            embeddings.patch_embedding = ConvPatchStem(*sizes)


def tiny_llava(config: LlavaConfig) -> LlavaForConditionalGeneration:
    """The model ``config`` describes, its vision stem included, with random weights."""
    return (
        ConvStemLlava(config)
        if vision_stem_of(config) == "conv"
        else LlavaForConditionalGeneration(config)
    )
