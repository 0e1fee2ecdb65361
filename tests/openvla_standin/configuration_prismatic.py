# ruff: noqa  (stand-in for 4.40-era remote code: its typing style is kept on purpose)
"""Stand-in for OpenVLA's configuration_prismatic.py (transformers 4.40-era API), for tests.

Same structure as the real file: a PrismaticConfig that builds a Llama
``text_config`` from a dict, and an OpenVLAConfig that adds ``norm_stats`` and
``n_action_bins``. The vision backbone is described by ``image_size`` and
``patch_size`` instead of timm model ids, because timm (0.9, which imports
torchvision) cannot be imported on the test machines.
"""

from typing import Any, Dict, List, Optional

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING


class PrismaticConfig(PretrainedConfig):
    model_type: str = "prismatic"
    is_composition: bool = False

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        vision_dim: int = 16,
        text_config: Optional[Dict[str, Any]] = None,
        llm_max_length: int = 2048,
        pad_token_id: int = 32000,
        pad_to_multiple_of: int = 64,
        use_fused_vision_backbone: bool = False,
        **kwargs: str,
    ) -> None:
        self.image_size, self.patch_size, self.vision_dim = image_size, patch_size, vision_dim
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.llm_max_length = llm_max_length
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.text_config = (
            CONFIG_MAPPING["llama"](**text_config)
            if text_config is not None
            else CONFIG_MAPPING["llama"]()
        )
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class OpenVLAConfig(PrismaticConfig):
    model_type: str = "openvla"

    def __init__(
        self,
        norm_stats: Optional[Dict[str, Dict[str, Dict[str, List[float]]]]] = None,
        n_action_bins: int = 256,
        **kwargs: str,
    ) -> None:
        self.norm_stats, self.n_action_bins = norm_stats, n_action_bins
        super().__init__(**kwargs)
