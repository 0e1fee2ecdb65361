# ruff: noqa  (stand-in for 4.40-era remote code: its typing style is kept on purpose)
"""Stand-in for OpenVLA's processing_prismatic.py (transformers 4.40-era imports), for tests.

Imports ``PaddingStrategy`` etc. from ``transformers.tokenization_utils``, a
module transformers 5 removed, exactly like the real file. The image
processor resizes and normalizes PIL images with numpy instead of the
timm/torchvision transform the real one builds.
"""

from typing import Any, ClassVar, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BatchFeature, ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils import (
    PaddingStrategy,
    PreTokenizedInput,
    TextInput,
    TruncationStrategy,
)
from transformers.utils import TensorType


class PrismaticImageProcessor(ImageProcessingMixin):
    model_input_names: ClassVar[List[str]] = ["pixel_values"]

    def __init__(
        self,
        use_fused_vision_backbone: bool = False,
        image_resize_strategy: str = "resize-naive",
        input_sizes: Optional[List[Tuple[int, int, int]]] = None,
        means: Optional[List[Tuple[float, float, float]]] = None,
        stds: Optional[List[Tuple[float, float, float]]] = None,
        **kwargs: str,
    ) -> None:
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.image_resize_strategy = image_resize_strategy
        self.input_sizes = [(3, 224, 224)] if input_sizes is None else input_sizes
        self.means = [(0.5, 0.5, 0.5)] if means is None else means
        self.stds = [(0.5, 0.5, 0.5)] if stds is None else stds
        super().__init__(**kwargs)

    def apply_transform(self, img: Image.Image) -> torch.Tensor:
        imgs_t = []
        for size, mean, std in zip(self.input_sizes, self.means, self.stds):
            resized = img.convert("RGB").resize((size[2], size[1]), Image.BICUBIC)
            arr = np.asarray(resized, dtype=np.float32) / 255.0
            arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
            imgs_t.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.cat(imgs_t, dim=0)

    def preprocess(
        self,
        images: Union[Image.Image, List[Image.Image]],
        return_tensors: Optional[Union[str, TensorType]] = None,
        **_: str,
    ) -> BatchFeature:
        if not isinstance(images, list):
            images = [images]
        pixel_values = torch.stack([self.apply_transform(img) for img in images])
        return BatchFeature(
            data={"pixel_values": pixel_values.float().numpy()}, tensor_type=return_tensors
        )

    def __call__(
        self, images: Union[Image.Image, List[Image.Image]], **kwargs: Any
    ) -> BatchFeature:
        return self.preprocess(images, **kwargs)


class PrismaticProcessor(ProcessorMixin):
    attributes: ClassVar[List[str]] = ["image_processor", "tokenizer"]
    image_processor_class: str = "AutoImageProcessor"
    tokenizer_class: str = "AutoTokenizer"

    def __init__(
        self,
        image_processor: Optional[ImageProcessingMixin] = None,
        tokenizer: Optional[PreTrainedTokenizerBase] = None,
    ) -> None:
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        text: Union[TextInput, PreTokenizedInput, List[TextInput], List[PreTokenizedInput]],
        images: Union[Image.Image, List[Image.Image]],
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Optional[Union[bool, str, TruncationStrategy]] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[Union[str, TensorType]] = TensorType.PYTORCH,
    ) -> BatchFeature:
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        text_inputs = self.tokenizer(
            text,
            return_tensors=return_tensors,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
        )
        if pixel_values.shape[0] != text_inputs.input_ids.shape[0]:
            raise ValueError("Batch is malformed; expected same number of images and text inputs!")
        return BatchFeature(data={**text_inputs, "pixel_values": pixel_values})

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, **kwargs: str
    ) -> List[str]:
        return self.tokenizer.batch_decode(
            sequences=sequences, skip_special_tokens=skip_special_tokens, **kwargs
        )

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: str) -> str:
        return self.tokenizer.decode(
            token_ids=token_ids, skip_special_tokens=skip_special_tokens, **kwargs
        )
