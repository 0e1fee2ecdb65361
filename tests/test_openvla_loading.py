"""load_openvla / OpenVLAPolicy end to end, on a tiny random checkpoint in OpenVLA's on-disk format.

The checkpoint is built in a temporary directory: config.json whose
``auto_map`` points at the stand-in remote code in ``tests/openvla_standin``
(4.40-era API, so the transformers 5 patches are exercised), a 32001-token
tokenizer, processor configs and random safetensors weights. Nothing is
downloaded; the real 7B weights are not used.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vla_rl_lib.policy.action_tokenizer import ActionStatistics
from vla_rl_lib.policy.openvla import (
    OPENVLA_7B,
    OPENVLA_PROMPT_SUFFIX_TOKEN_ID,
    OpenVLAPolicy,
    build_openvla_policy,
    check_trust_remote_code,
    load_openvla,
    resolve_checkpoint_dir,
    select_action_statistics,
)
from vla_rl_lib.policy.openvla_compat import apply_openvla_patches, load_remote_class

STANDIN_CODE = Path(__file__).parent / "openvla_standin"
IMAGE_SIZE = 32
PATCH_SIZE = 8  # 16 image patches
BASE_VOCAB = 32000  # Llama-2's; OpenVLA adds <PAD> at 32000 and pads the embedding to 32064
WORDS = "in : what action should the robot take to pick up blue cube ? out".split()


def _action_stats(dim: int, scale: float = 0.1) -> dict:
    return {
        "action": {
            "q01": [-scale] * dim,
            "q99": [scale] * dim,
            "mask": [True] * (dim - 1) + [False],
            "mean": [0.0] * dim,
            "std": [scale / 2] * dim,
        }
    }


def _write_tokenizer(directory: Path) -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    for index in range(len(vocab), BASE_VOCAB):
        vocab[f"<x{index}>"] = index
    vocab["<PAD>"] = BASE_VOCAB
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<PAD>",
        padding_side="right",
    ).save_pretrained(directory)


def _config(norm_stats: dict) -> dict:
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "model_type": "openvla",
        "torch_dtype": "bfloat16",
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "vision_dim": 16,
        "text_config": {
            "model_type": "llama",
            "vocab_size": BASE_VOCAB + 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128,
            "pad_token_id": BASE_VOCAB,
            "torch_dtype": "bfloat16",
        },
        "pad_token_id": BASE_VOCAB,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "norm_stats": norm_stats,
    }


def make_openvla_checkpoint(
    root: Path, norm_stats: dict | None = None, with_weights: bool = True
) -> Path:
    """A tiny OpenVLA-format checkpoint under ``root`` (unique folder name: fresh remote-code module)."""
    norm_stats = norm_stats or {"crane_x7": _action_stats(8), "bridge_orig": _action_stats(7)}
    directory = root / f"openvla_tiny_{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    for source in STANDIN_CODE.glob("*.py"):
        shutil.copy(source, directory / source.name)
    (directory / "config.json").write_text(json.dumps(_config(norm_stats)))
    _write_tokenizer(directory)
    processor_map = {
        "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
        "AutoProcessor": "processing_prismatic.PrismaticProcessor",
    }
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "auto_map": processor_map,
                "image_processor_type": "PrismaticImageProcessor",
                "processor_class": "PrismaticProcessor",
                "image_resize_strategy": "resize-naive",
                "input_sizes": [[3, IMAGE_SIZE, IMAGE_SIZE]],
                "means": [[0.5, 0.5, 0.5]],
                "stds": [[0.5, 0.5, 0.5]],
                "use_fused_vision_backbone": False,
            }
        )
    )
    (directory / "processor_config.json").write_text(
        json.dumps({"auto_map": processor_map, "processor_class": "PrismaticProcessor"})
    )
    if with_weights:
        _write_random_weights(directory, root)
    return directory


def _write_random_weights(directory: Path, root: Path) -> None:
    # Build through a copy of the code in another folder, so the checkpoint's own module
    # stays unpatched until load_openvla patches it.
    builder = root / f"builder_{uuid.uuid4().hex[:8]}"
    builder.mkdir()
    for name in ("configuration_prismatic.py", "modeling_prismatic.py", "config.json"):
        shutil.copy(directory / name, builder / name)
    model_cls = load_remote_class("modeling_prismatic.OpenVLAForActionPrediction", builder)
    apply_openvla_patches(model_cls)
    config = model_cls.config_class.from_pretrained(builder)
    config.text_config.dtype = torch.float32
    torch.manual_seed(0)
    model = model_cls(config)
    # Random init gives near-uniform action logits; sharpen the action rows so greedy picks are stable.
    with torch.no_grad():
        model.language_model.lm_head.weight[BASE_VOCAB - 256 : BASE_VOCAB] *= 50.0
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_openvla_checkpoint(tmp_path_factory.mktemp("openvla"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_openvla(
        checkpoint,
        dtype=torch.float32,
        device="cpu",
        trust_remote_code_allowlist=[str(checkpoint)],
        unnorm_key="crane_x7",
    )


# ---------------------------------------------------------------- refusals


def test_remote_code_off_the_allowlist_is_refused_with_the_config_fix(tmp_path):
    with pytest.raises(PermissionError) as error:
        load_openvla(tmp_path / "someone_elses_vla")
    message = str(error.value)
    assert "trust_remote_code" in message and OPENVLA_7B in message
    assert str(tmp_path / "someone_elses_vla") in message


def test_allowlist_matches_the_same_directory_spelled_differently(tmp_path):
    (tmp_path / "ckpt").mkdir()
    check_trust_remote_code(str(tmp_path / "ckpt" / ".." / "ckpt"), [str(tmp_path / "ckpt")])


def test_missing_weights_offline_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError) as error:
        load_openvla(OPENVLA_7B)
    message = str(error.value)
    assert f"huggingface-cli download {OPENVLA_7B}" in message
    assert "pretrained_checkpoint" in message


def test_checkpoint_folder_without_weights_is_reported(tmp_path):
    directory = make_openvla_checkpoint(tmp_path, with_weights=False)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        resolve_checkpoint_dir(directory)


def test_missing_timm_names_the_project_extra(tmp_path):
    directory = make_openvla_checkpoint(tmp_path, with_weights=False)
    (directory / "model.safetensors").write_bytes(b"")  # never read: the import check comes first
    modeling = directory / "modeling_prismatic.py"
    modeling.write_text("import timm\n" + modeling.read_text())
    with pytest.raises(ImportError, match=r"pip install -e '\.\[openvla\]'") as error:
        load_openvla(directory, trust_remote_code_allowlist=[str(directory)])
    assert "timm" in str(error.value)


# ---------------------------------------------------------------- statistics


def test_statistics_pick_the_only_entry_of_the_right_dimension():
    norm_stats = {"crane_x7": _action_stats(8, 0.2), "bridge_orig": _action_stats(7)}
    key, stats = select_action_statistics(norm_stats, None, action_dim=8)
    assert key == "crane_x7"
    assert stats.action_dim == 8 and np.allclose(stats.q99, 0.2)
    assert stats.mask.tolist() == [True] * 7 + [False]


def test_statistics_for_openvla_7d_data_do_not_fit_crane_x7():
    norm_stats = {"bridge_orig": _action_stats(7), "fractal": _action_stats(7)}
    assert select_action_statistics(norm_stats, None, action_dim=8) == (None, None)
    with pytest.raises(ValueError, match="SFT"):
        select_action_statistics(norm_stats, "bridge_orig", action_dim=8)


def test_statistics_need_a_key_when_several_fit():
    norm_stats = {"bridge_orig": _action_stats(7), "fractal": _action_stats(7)}
    with pytest.raises(ValueError, match="unnorm_key") as error:
        select_action_statistics(norm_stats, None, action_dim=7)
    assert "bridge_orig" in str(error.value) and "fractal" in str(error.value)
    key, stats = select_action_statistics(norm_stats, "fractal", action_dim=7)
    assert key == "fractal" and stats.action_dim == 7


def test_unknown_unnorm_key_lists_the_choices():
    with pytest.raises(KeyError, match="bridge_orig"):
        select_action_statistics({"bridge_orig": _action_stats(7)}, "crane", action_dim=7)


def test_malformed_norm_stats_are_named():
    with pytest.raises(ValueError, match="q01"):
        select_action_statistics({"bad": {"action": {"mean": [0.0]}}}, None, action_dim=1)


# ---------------------------------------------------------------- loading


def test_checkpoint_code_has_the_transformers_4_breakages_before_loading(tmp_path):
    directory = make_openvla_checkpoint(tmp_path, with_weights=False)
    model_cls = load_remote_class("modeling_prismatic.OpenVLAForActionPrediction", directory)
    config = model_cls.config_class.from_pretrained(directory)
    with pytest.raises(AttributeError, match="_supports_sdpa"):
        model_cls(config)


def test_load_openvla_returns_model_processor_and_action_facts(loaded, checkpoint):
    assert loaded.checkpoint_dir == checkpoint
    assert loaded.action_token_ids == range(31744, 32000)
    assert loaded.prompt_template == "In: What action should the robot take to {instruction}?\nOut:"
    assert loaded.prompt_suffix_token_ids == (OPENVLA_PROMPT_SUFFIX_TOKEN_ID,)
    assert loaded.unnorm_key == "crane_x7" and loaded.statistics.action_dim == 8
    assert loaded.action_dim == 8
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert loaded.model.can_generate()
    assert type(loaded.processor).__name__ == "PrismaticProcessor"
    assert loaded.processor.tokenizer.bos_token_id == 1


def test_load_openvla_loads_bfloat16_despite_float_text_config(tmp_path):
    directory = make_openvla_checkpoint(tmp_path)
    bf16 = load_openvla(
        directory, dtype=torch.bfloat16, device="cpu", trust_remote_code_allowlist=[str(directory)]
    )
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}


def test_generate_uses_the_kv_cache_and_predict_action_runs(loaded):
    model, processor = loaded.model, loaded.processor
    from PIL import Image

    image = Image.fromarray(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, dtype=np.uint8))
    inputs = processor(loaded.prompt_template.format(instruction="pick up the blue cube"), image)
    seen = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (
                kwargs.get("inputs_embeds")
                if kwargs.get("input_ids") is None
                else kwargs["input_ids"]
            ).shape[1]
        ),
        with_kwargs=True,
    )
    try:
        actions = model.predict_action(**inputs, unnorm_key="crane_x7", do_sample=False)
    finally:
        hook.remove()
    assert actions.shape == (8,)
    # First step: BOS + 16 patches + prompt; then one token per step from the cache.
    assert seen[0] > 16 and seen[1:] == [1] * 7


# ---------------------------------------------------------------- policy


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def policy(loaded) -> OpenVLAPolicy:
    return build_openvla_policy(loaded, lora=None, seed=0)


def test_parallel_decoding_is_refused_for_openvla(loaded):
    with pytest.raises(ValueError, match="autoregressive"):
        build_openvla_policy(loaded, decoding="parallel")


def test_policy_needs_statistics_matching_crane_x7(loaded):
    base = type(loaded)(**{**loaded.__dict__, "statistics": None, "unnorm_key": None})
    with pytest.raises(ValueError, match="SFT"):
        build_openvla_policy(base)
    seven = ActionStatistics(q01=[-1.0] * 7, q99=[1.0] * 7, mask=[True] * 7)
    with pytest.raises(ValueError, match="7-D"):
        build_openvla_policy(base, statistics=seven, unnorm_key="bridge_orig")


def test_prompt_ids_start_with_bos_and_end_with_the_space_token(policy):
    ids = policy._encode_prompt_ids("pick up the blue cube")
    assert ids[0] == 1 and ids[-1] == OPENVLA_PROMPT_SUFFIX_TOKEN_ID


def test_preprocess_matches_the_processor(policy, loaded):
    from PIL import Image

    images = _images(2)
    ours = policy.preprocess_images(images)
    theirs = loaded.processor.image_processor(
        [Image.fromarray(i) for i in images], return_tensors="pt"
    )
    assert ours.shape == theirs["pixel_values"].shape
    assert torch.allclose(ours, theirs["pixel_values"], atol=1e-5)


def test_greedy_act_matches_openvla_generate(policy, loaded):
    """The batched multimodal forward reproduces OpenVLA's own forward + generate, token for token."""
    images = _images(1, seed=3)
    out = policy.act(images, ["pick up the blue cube"], greedy=True)
    prompt_ids = torch.tensor([policy._encode_prompt_ids("pick up the blue cube")])
    generated = loaded.model.generate(
        prompt_ids,
        pixel_values=policy.preprocess_images(images),
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=8,
        do_sample=False,
    )
    assert out.token_ids.tolist() == generated[:, -8:].tolist()


def test_batched_act_with_different_prompts_matches_one_by_one(policy):
    images = _images(2, seed=5)
    instructions = ["pick up the blue cube", "pick up the cube"]
    batched = policy.act(images, instructions, greedy=True)
    for i in range(2):
        single = policy.act(images[i : i + 1], instructions[i : i + 1], greedy=True)
        assert single.token_ids.tolist() == batched.token_ids[i : i + 1].tolist()
        assert torch.allclose(single.log_probs, batched.log_probs[i : i + 1], atol=1e-4)
        assert torch.allclose(single.values, batched.values[i : i + 1], atol=1e-4)


def test_evaluate_recomputes_the_rollout_log_probs(policy):
    images = _images(3, seed=7)
    instructions = ["pick up the blue cube", "pick up the cube", "take the cube"]
    torch.manual_seed(0)
    out = policy.act(images, instructions, temperature=1.0)
    assert out.actions.shape == (3, 8) and out.token_ids.shape == (3, 8)
    assert ((out.token_ids >= 31744) & (out.token_ids < 32000)).all()
    evaluated = policy.evaluate_actions(images, instructions, out.token_ids)
    assert torch.allclose(evaluated.log_probs, out.log_probs, atol=1e-4)
    assert torch.allclose(evaluated.values, out.values, atol=1e-4)
    loss = policy.sft_loss(images, instructions, out.token_ids)
    loss.backward()
    assert loaded_grad_reaches_vision(policy)


def loaded_grad_reaches_vision(policy: OpenVLAPolicy) -> bool:
    grad = policy._hf_model().vision_backbone.featurizer.weight.grad
    return grad is not None and bool(grad.abs().sum() > 0)


def test_lora_policy_saves_and_reloads_through_the_openvla_loader(checkpoint, tmp_path):
    from vla_rl_lib.policy.lora import LoRAConfig
    from vla_rl_lib.policy.openvla import openvla_model_loader

    # A fresh load: get_peft_model injects LoRA layers into the model it wraps.
    loaded = load_openvla(
        checkpoint, dtype=torch.float32, device="cpu", trust_remote_code_allowlist=[str(checkpoint)]
    )
    trained = build_openvla_policy(loaded, lora=LoRAConfig(enabled=True, rank=32), seed=1)
    images, instructions = _images(2, seed=11), ["pick up the cube", "pick up the blue cube"]
    before = trained.act(images, instructions, greedy=True)
    trained.save_pretrained(str(tmp_path / "policy"))
    allowlist = [str(loaded.checkpoint_dir), str(tmp_path / "policy")]
    loader = openvla_model_loader(allowlist, dtype=torch.float32, device="cpu")
    restored = OpenVLAPolicy.from_checkpoint(tmp_path / "policy", model_loader=loader)
    after = restored.act(images, instructions, greedy=True)
    assert restored.unnorm_key == "crane_x7" and restored.decoding == "autoregressive"
    assert after.token_ids.tolist() == before.token_ids.tolist()
    assert torch.allclose(after.values, before.values, atol=1e-5)


def test_build_openvla_policy_loads_a_path_itself(checkpoint):
    policy = build_openvla_policy(
        checkpoint,
        dtype=torch.float32,
        device="cpu",
        trust_remote_code_allowlist=(str(checkpoint),),
        unnorm_key="crane_x7",
        lora=None,
    )
    assert isinstance(policy, OpenVLAPolicy)
    assert policy.unnorm_key == "crane_x7" and policy.statistics.action_dim == 8
    assert policy.act(_images(1), ["pick up the cube"], greedy=True).actions.shape == (1, 8)
