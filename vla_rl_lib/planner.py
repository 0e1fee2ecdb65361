"""How much memory and time a configuration needs, before anything is loaded.

``python -m vla_rl_lib plan --config FILE [--gpus N] [--gpu-memory-gb M] [--verbose]``

Parameter counts come from the architecture, built as meta-device modules
(no weights are allocated or read):

* ``tiny``    — the tiny VLA of ``model.*`` (``vla_rl_lib.policy.tiny_vla``);
* ``openvla`` — OpenVLA-7B (Kim et al. 2024, arXiv:2406.09246): Llama-2-7B
  (32 layers, hidden 4096, MLP 11008, vocabulary 32064 after padding) + DINOv2
  ViT-L/14 with 4 registers + SigLIP So400m/14, both at 224 px, + the fused
  GELU-MLP projector 2176 -> 8704 -> 4096 -> 4096 (Prismatic VLMs,
  arXiv:2402.07865; ``config.json`` of ``openvla/openvla-7b``).

Memory terms per learner device (bytes = elements x bytes per element):

* weights: every parameter in ``model.dtype`` (LoRA adapters and the value head
  in fp32, as peft and ``ValueHead`` keep them); FSDP divides by the ranks;
* gradients and AdamW's two moments: trainable parameters only, in their dtype;
  DDP adds one bucket copy of the gradients;
* activations of one micro-batch: per transformer layer and token,
  ``6h + 2·heads·s`` (norm input/output, q/k/v, attention output, attention
  scores and probabilities) plus the MLP's ``2h + 4i`` (gated) or ``2h + 2i``
  (GELU) — the bookkeeping of Korthikanti et al. 2022 (arXiv:2205.05198, §4)
  for these layer types. Gradient checkpointing keeps one ``h`` per layer and
  token, plus one layer's full set while it is recomputed.

Seconds per update follow from stated throughput assumptions (``Hardware``);
they are estimates, printed with their assumptions, never measurements.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from lift import task
from vla_rl_lib.config import VLARLConfig

log = logging.getLogger(__name__)

GB = 1e9
KNOWN_MODELS = ("tiny", "openvla")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4
USABLE_FRACTION = 0.9  # of device memory: CUDA context, allocator fragmentation, kernels' workspace
CLEARLY_TOO_BIG = 1.25  # preflight refuses only when the estimate exceeds the device by this much
# Memory a process holds beyond its tensors, measured by benchmarks/planner_memory.py here:
# on CPU, the kernels paged in by the first forward/backward (peak RSS at micro-batch 1 minus the
# tensors), and glibc malloc keeping freed activation memory between micro-batches (the slope of
# peak RSS over micro-batch size is 1.7x the bytes autograd saves). On a GPU, the CUDA context
# and cuBLAS workspaces (typically 0.5-1 GB; PyTorch's CUDA caching allocator docs), assumed 1 GB.
CPU_RUNTIME_BYTES = 40e6
CPU_ALLOCATOR_FACTOR = 1.7
GPU_RUNTIME_BYTES = 1e9
# MuJoCo CRANE-X7 scenes with their EGL renderer, measured by
# `benchmarks/planner_memory.py --simulator` here: 126.8 MB for 4 envs at 64 px
# (params/default.yaml), 130.4 MB for 8 envs at 224 px (params/full.yaml): a fixed
# cost per rollout process (libraries, GL context) and about 1 MB per environment.
SIMULATOR_BYTES_PER_PROCESS = 123e6
SIMULATOR_BYTES_PER_ENV = 1e6
PROMPT_TOKENS_PER_WORD = 1.5  # Llama/BPE tokens per English word, rounded up
PROMPT_TEMPLATE_TOKENS = 16  # "In: What action should the robot take to ...?\nOut:" and BOS


class PlanError(ValueError):
    """The planner cannot work on this input; the message says what to change."""


@dataclass(frozen=True)
class Tower:
    """One transformer stack: what its activations scale with."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    tokens: int  # sequence length per sample
    gated_mlp: bool  # SwiGLU (Llama) vs GELU MLP (ViTs)

    def layer_elements(self) -> int:
        """Activations one layer keeps for backward, per sample (elements)."""
        attention = 6 * self.hidden + 2 * self.heads * self.tokens
        mlp = 2 * self.hidden + (4 if self.gated_mlp else 2) * self.intermediate
        return self.tokens * (attention + mlp)


@dataclass(frozen=True)
class ModelCount:
    """Parameter counts of a model, from its architecture."""

    name: str
    description: str
    components: dict[str, int]  # parameters per part
    linears: tuple[tuple[str, int, int], ...]  # (module name, in, out) LoRA may target
    towers: tuple[Tower, ...]
    vocab: int
    hidden: int
    sources: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def lora_params(self, rank: int, target_modules: str | list[str]) -> int:
        """peft's count: rank x (in + out) per targeted Linear ('all-linear': all but the LM head)."""
        if isinstance(target_modules, str):
            chosen = self.linears
        else:
            chosen = tuple(
                entry for entry in self.linears
                if any(entry[0] == t or entry[0].endswith("." + t) for t in target_modules)
            )
        return sum(rank * (fan_in + fan_out) for _, fan_in, fan_out in chosen)


def _linears(module, skip: object) -> tuple[tuple[str, int, int], ...]:
    from torch import nn

    return tuple(
        (name, m.in_features, m.out_features)
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and m is not skip
    )


def _prompt_tokens(instruction: str) -> int:
    return PROMPT_TEMPLATE_TOKENS + math.ceil(PROMPT_TOKENS_PER_WORD * len(instruction.split()))


@cache
def _tiny_count(sizes: tuple[tuple[str, int | str], ...], instruction: str, action_dim: int) -> ModelCount:
    import torch

    from vla_rl_lib.policy.tiny_vla import TinyVLAConfig, build_tokenizer, llava_config, tiny_llava

    config = TinyVLAConfig(**dict(sizes))
    tokenizer = build_tokenizer(config.text_vocab_size, config.action_slots)
    with torch.device("meta"):
        model = tiny_llava(llava_config(config, tokenizer))
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    image_tokens = config.image_tokens
    return ModelCount(
        name="tiny",
        description="tiny Llava VLA (SigLIP vision, GELU projector, Llama decoder), random weights",
        components={
            "decoder + LM head": total - vision - projector,
            "vision (SigLIP)": vision,
            "projector": projector,
        },
        linears=_linears(model, model.get_output_embeddings()),
        towers=(
            Tower("vision", config.vision_layers, config.vision_hidden_size, config.vision_heads,
                  config.vision_intermediate_size, image_tokens, gated_mlp=False),
            Tower("decoder", config.text_layers, config.text_hidden_size, config.text_heads,
                  config.text_intermediate_size,
                  image_tokens + _prompt_tokens(instruction) + action_dim, gated_mlp=True),
        ),
        vocab=tokenizer.vocab_size,
        hidden=config.text_hidden_size,
        sources=("vla_rl_lib/policy/tiny_vla.py, built on the meta device from model.*",),
    )


# OpenVLA-7B: the numbers of openvla/openvla-7b's config.json and Prismatic's backbones.
OPENVLA_LLM = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
OPENVLA_DINO = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                    patch_size=14, image_size=224, num_register_tokens=4)
OPENVLA_SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                      num_attention_heads=16, patch_size=14, image_size=224)
OPENVLA_PROJECTOR = (2176, 8704, 4096, 4096)  # fused-gelu-mlp: DINOv2 1024 + SigLIP 1152 -> LLM


@cache
def _openvla_count(instruction: str, action_dim: int) -> ModelCount:
    import torch
    from torch import nn
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    dims = OPENVLA_PROJECTOR
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**OPENVLA_LLM))
        dino = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**OPENVLA_DINO))
        siglip = SiglipVisionModel(SiglipVisionConfig(**OPENVLA_SIGLIP))
        projector = nn.Sequential(
            nn.Linear(dims[0], dims[1]), nn.GELU(), nn.Linear(dims[1], dims[2]), nn.GELU(),
            nn.Linear(dims[2], dims[3]),
        )
    parts = {"Llama-2-7B": llm, "DINOv2 ViT-L/14": dino, "SigLIP So400m/14": siglip,
             "projector": projector}
    patches = (224 // 14) ** 2
    linears: list[tuple[str, int, int]] = []
    for prefix, module in parts.items():
        skip = module.get_output_embeddings() if module is llm else None
        linears += [(f"{prefix}.{n}", i, o) for n, i, o in _linears(module, skip)]
    return ModelCount(
        name="openvla",
        description="OpenVLA-7B: Llama-2-7B + DINOv2 ViT-L/14 + SigLIP So400m/14 + MLP projector",
        components={k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()},
        linears=tuple(linears),
        towers=(
            Tower("DINOv2", 24, 1024, 16, 4096, patches + 1 + 4, gated_mlp=False),
            Tower("SigLIP", 27, 1152, 16, 4304, patches, gated_mlp=False),
            Tower("Llama-2", 32, 4096, 32, 11008,
                  patches + _prompt_tokens(instruction) + action_dim - 1, gated_mlp=True),
        ),
        vocab=OPENVLA_LLM["vocab_size"],
        hidden=OPENVLA_LLM["hidden_size"],
        sources=(
            "OpenVLA, Kim et al. 2024, arXiv:2406.09246 (architecture; 7.5B parameters)",
            "huggingface.co/openvla/openvla-7b config.json (Llama-2 sizes, vocab 32064, 224 px)",
            "Prismatic VLMs, Karamcheti et al. 2024, arXiv:2402.07865 (DinoSigLIP, fused-gelu-mlp)",
        ),
    )


def count_parameters(config: VLARLConfig) -> ModelCount:
    """The model of ``config.model.name``, counted from its architecture."""
    name = config.model.name
    if name not in KNOWN_MODELS:
        raise PlanError(f"model.name={name!r} is unknown to the planner; known models: {', '.join(KNOWN_MODELS)}")
    instruction = config.language_instruction or episode_instruction(config.rollout.env_id)
    action_dim = task.action_dim(config.rollout.control_mode)
    if name == "tiny":
        sizes = tuple(sorted(config.model.tiny_vla_sizes().items()))
        return _tiny_count(sizes, instruction, action_dim)
    return _openvla_count(instruction, action_dim)


def episode_instruction(env_id: str) -> str:
    """The prompt to size for when ``language_instruction`` is null and each episode brings its
    own: PickPlace's longest template, else the task's one instruction."""
    from lift.pickplace import PARAPHRASED_TEMPLATES, TRAIN_TEMPLATES
    from lift.task import INSTRUCTION, PICKPLACE_ENV_ID

    if env_id != PICKPLACE_ENV_ID:
        return INSTRUCTION
    template = max((*TRAIN_TEMPLATES, *PARAPHRASED_TEMPLATES), key=lambda t: len(t.split()))
    return template.format(cube="red", plate="blue")


@dataclass(frozen=True)
class Hardware:
    """Throughput assumptions of the time estimate (stated, not measured)."""

    name: str
    flops: float  # dense bf16/fp32 peak, FLOP/s
    utilization: float  # fraction of peak a training step reaches (MFU)
    memory_bandwidth: float  # bytes/s, bounds token-by-token decoding
    env_steps_per_s: float  # one rollout process: simulator + rendering, all its envs


GPU_ASSUMED = Hardware("A100-80GB (312 TFLOP/s bf16, 2.0 TB/s), 40% MFU", 312e12, 0.4, 2.0e12,
                       env_steps_per_s=400.0)
CPU_ASSUMED = Hardware("one CPU core (~50 GFLOP/s fp32), 30% utilization", 50e9, 0.3, 10e9,
                       env_steps_per_s=400.0)
# env_steps_per_s: benchmarks/env_throughput.py measured 799 steps/s at 128 px with 8 envs
# (README); 224 px renders take about twice as long, hence 400.


@dataclass
class Term:
    name: str
    bytes: float
    formula: str


@dataclass
class Plan:
    config: VLARLConfig
    model: ModelCount
    gpus: int
    device_bytes: float
    device_kind: str  # "gpu" or "cpu" (host memory is the device)
    strategy: str
    learner: list[Term] = field(default_factory=list)
    activations_checkpointed: float = 0.0
    rollout: list[Term] = field(default_factory=list)
    rollout_on_device: float = 0.0  # part of the rollout memory on learner device 0
    seconds: list[Term] = field(default_factory=list)  # Term.bytes holds seconds here
    hardware: Hardware = GPU_ASSUMED
    suggestion: str | None = None

    @property
    def learner_bytes(self) -> float:
        return sum(t.bytes for t in self.learner)

    @property
    def rollout_bytes(self) -> float:
        return sum(t.bytes for t in self.rollout)

    @property
    def needed_on_device(self) -> float:
        return self.learner_bytes + self.rollout_on_device

    @property
    def fits(self) -> bool:
        return self.needed_on_device <= USABLE_FRACTION * self.device_bytes


def trainable_params(config: VLARLConfig, model: ModelCount) -> tuple[int, int]:
    """(trainable parameters, their bytes per element)."""
    value_head = model.hidden * 256 + 256 + 256 + 1
    if config.lora.enabled:
        return model.lora_params(config.lora.rank, config.lora.target_modules) + value_head, FP32
    return model.total + value_head, DTYPE_BYTES[config.model.dtype]


def activation_bytes(config: VLARLConfig, model: ModelCount, micro: int, checkpointed: bool) -> float:
    dtype = DTYPE_BYTES[config.model.dtype]
    per_sample = 0.0
    for tower in model.towers:
        if checkpointed:
            per_sample += tower.layers * tower.tokens * tower.hidden + tower.layer_elements()
        else:
            per_sample += tower.layers * tower.layer_elements()
    decoder = model.towers[-1]
    per_sample += 2 * decoder.tokens * decoder.hidden  # embeddings and the final norm
    action_logits = 8 * model.vocab  # the LM head runs on the action positions only
    return micro * (per_sample * dtype + action_logits * (dtype + FP32))


def build_plan(config: VLARLConfig, gpus: int | None = None, gpu_memory_gb: float | None = None,
               strategy: str | None = None) -> Plan:
    """Every memory and time term for ``config`` on ``gpus`` devices of ``gpu_memory_gb``
    (detected when not given), and the cheapest change when it does not fit."""
    kind, count, device_bytes = detect_devices(config, gpus, gpu_memory_gb)
    plan = plan_for_devices(config, count, device_bytes / GB, strategy or config_strategy(config), kind)
    _time_terms(plan)
    if not plan.fits:
        plan.suggestion = cheapest_fix(plan)
    return plan


def config_strategy(config: VLARLConfig) -> str:
    return config.distributed_strategy


def _learner_terms(plan: Plan) -> None:
    cfg, m, n = plan.config, plan.model, plan.gpus
    dtype = DTYPE_BYTES[cfg.model.dtype]
    trainable, t_bytes = trainable_params(cfg, m)
    shards = n if plan.strategy == "fsdp" else 1
    frozen = m.total if cfg.lora.enabled else 0
    weights = frozen * dtype + trainable * t_bytes
    plan.learner.append(Term(
        "weights", weights / shards,
        f"({m.total:,} base x {dtype} B" + (f" + {trainable:,} trainable x {t_bytes} B)" if cfg.lora.enabled
                                            else " + value head)") + (f" / {shards} FSDP ranks" if shards > 1 else ""),
    ))
    what = f"LoRA rank {cfg.lora.rank} + value head" if cfg.lora.enabled else "all weights"
    plan.learner.append(Term(
        "optimizer (AdamW m, v)", 2 * trainable * t_bytes / shards,
        f"2 x {trainable:,} trainable ({what}) x {t_bytes} B" + (f" / {shards}" if shards > 1 else ""),
    ))
    gradients = trainable * t_bytes / shards
    formula = f"{trainable:,} trainable x {t_bytes} B" + (f" / {shards}" if shards > 1 else "")
    if plan.strategy == "ddp" and n > 1:
        gradients *= 2
        formula += " x 2 (DDP's all-reduce buckets)"
    plan.learner.append(Term("gradients", gradients, formula))
    if plan.strategy == "fsdp" and n > 1:
        largest_unit = max(t.hidden * t.hidden * 4 + 3 * t.hidden * t.intermediate for t in m.towers)
        plan.learner.append(Term(
            "FSDP unsharded units", 2 * largest_unit * dtype,
            f"2 (current + prefetched) x largest block ~{largest_unit:,} params x {dtype} B",
        ))
    micro = min(cfg.ppo.micro_batch_size, max(1, cfg.ppo.minibatch_size // n))
    checkpointing = gradient_checkpointing(cfg)
    act = activation_bytes(cfg, m, micro, checkpointing)
    plan.activations_checkpointed = activation_bytes(cfg, m, micro, True)
    towers = ", ".join(f"{t.name} L={t.layers} s={t.tokens} h={t.hidden} i={t.intermediate}" for t in m.towers)
    per_layer = ("checkpointed: L x s x h + one layer's full set" if checkpointing
                 else "L x s x (6h + 2 heads s + 2h + 4i gated | 2i GELU)")
    plan.learner.append(Term(
        f"activations (micro-batch {micro}{', checkpointed' if checkpointing else ''})", act,
        f"{micro} x [sum over towers of {per_layer}] x {dtype} B + 8 x vocab {m.vocab} logits; {towers}",
    ))
    if plan.device_kind == "cpu":
        plan.learner.append(Term(
            "runtime + malloc reserve", CPU_RUNTIME_BYTES + (CPU_ALLOCATOR_FACTOR - 1) * act,
            f"{CPU_RUNTIME_BYTES / 1e6:.0f} MB kernels paged in + {CPU_ALLOCATOR_FACTOR - 1:.1f} x activations "
            "(freed memory malloc keeps between micro-batches; measured here)",
        ))
    else:
        plan.learner.append(Term("runtime (CUDA context, workspaces)", GPU_RUNTIME_BYTES,
                                 f"{GPU_RUNTIME_BYTES / GB:.0f} GB, assumed"))


def gradient_checkpointing(config: VLARLConfig) -> bool:
    return config.model.gradient_checkpointing


def _rollout_terms(plan: Plan) -> None:
    cfg, m = plan.config, plan.model
    r = cfg.rollout
    dtype = DTYPE_BYTES[cfg.model.dtype]
    decoder = m.towers[-1]
    workers = r.num_workers if r.executor == "ray" else 0
    if workers:
        replica = m.total * dtype
        plan.rollout.append(Term(
            f"policy replicas ({workers} Ray workers)", workers * replica,
            f"{workers} x {m.total:,} x {dtype} B" + (" on the workers' GPUs" if r.worker_num_gpus else " in host memory"),
        ))
    envs = r.num_parallel_envs * max(1, workers)
    kv = envs * 2 * decoder.layers * decoder.tokens * decoder.hidden * dtype
    plan.rollout.append(Term(
        "KV cache while acting", kv,
        f"{envs} envs x 2 (K, V) x {decoder.layers} layers x {decoder.tokens} tokens x {decoder.hidden} x {dtype} B",
    ))
    processes = max(1, workers)
    plan.rollout.append(Term(
        "simulators", processes * SIMULATOR_BYTES_PER_PROCESS + envs * SIMULATOR_BYTES_PER_ENV,
        f"{processes} process(es) x {SIMULATOR_BYTES_PER_PROCESS / 1e6:.0f} MB + {envs} envs x "
        f"{SIMULATOR_BYTES_PER_ENV / 1e6:.0f} MB (MuJoCo + EGL renderer, measured here)",
    ))
    steps = cfg.max_batch_steps()
    image = r.image_size * r.image_size * 3
    plan.rollout.append(Term(
        "rollout buffer", steps * (image + 8 * 8 + 4 * 4),
        f"{steps} steps (num_rollouts x max_steps) x ({r.image_size}^2 x 3 B image + tokens, log-prob, value, reward)",
    ))
    local_on_gpu = plan.device_kind == "gpu" and not workers
    plan.rollout_on_device = kv if local_on_gpu else 0.0
    if plan.device_kind == "cpu":  # host memory is the device: everything shares it
        plan.rollout_on_device = plan.rollout_bytes


def _time_terms(plan: Plan) -> None:
    cfg, m, hw = plan.config, plan.model, plan.hardware
    steps = cfg.max_batch_steps()
    tokens = sum(t.tokens * t.layers * t.hidden for t in m.towers) / max(
        1, sum(t.layers * t.hidden for t in m.towers))  # parameter-weighted tokens per sample
    flops_per_sample = 2 * m.total * tokens
    r = cfg.rollout
    workers = r.num_workers if r.executor == "ray" else 1
    prefill = steps * flops_per_sample / (hw.flops * hw.utilization)
    passes = 8 if cfg.model.decoding == "autoregressive" else 1
    batches = steps / (r.num_parallel_envs * workers)
    decode = batches * passes * m.total * DTYPE_BYTES[cfg.model.dtype] / hw.memory_bandwidth
    sim = steps / (hw.env_steps_per_s * workers)
    plan.seconds.append(Term("rollout: simulator", sim,
                             f"{steps} steps / ({hw.env_steps_per_s:.0f} steps/s x {workers} processes)"))
    plan.seconds.append(Term(
        "rollout: policy", prefill + decode,
        f"{steps} x 2 x {m.total:,} params x {tokens:.0f} tokens / ({hw.flops:.3g} FLOP/s x {hw.utilization})"
        f" + {batches:.0f} batches x {passes} pass(es) x weights / {hw.memory_bandwidth:.3g} B/s",
    ))
    backward = 4 if cfg.lora.enabled else 6  # LoRA skips the frozen weights' gradients
    if gradient_checkpointing(cfg):
        backward += 2
    learn = (cfg.ppo.num_epochs * steps * backward / 2 * flops_per_sample
             / (hw.flops * hw.utilization * plan.gpus))
    plan.seconds.append(Term(
        "PPO update", learn,
        f"{cfg.ppo.num_epochs} epochs x {steps} samples x {backward} x params x tokens "
        f"/ ({plan.gpus} devices x {hw.flops:.3g} x {hw.utilization})",
    ))


def detect_devices(config: VLARLConfig, gpus: int | None, gpu_memory_gb: float | None) -> tuple[str, int, float]:
    """(kind, count, bytes per device): flags first, then what this machine has."""
    if gpus is not None and gpus < 1:
        raise PlanError(f"--gpus {gpus} must be >= 1")
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise PlanError(f"--gpu-memory-gb {gpu_memory_gb} must be > 0")
    wants_gpu = gpus is not None or gpu_memory_gb is not None or config.device.startswith("cuda")
    if wants_gpu:
        import torch

        have = torch.cuda.device_count()
        count = gpus if gpus is not None else max(have, 1)
        if gpu_memory_gb is not None:
            return "gpu", count, gpu_memory_gb * GB
        if have:
            return "gpu", count, float(torch.cuda.get_device_properties(0).total_memory)
        raise PlanError(
            "no CUDA GPU is visible to read its memory from; pass --gpu-memory-gb (e.g. 80 for an A100-80GB)"
        )
    if config.device == "auto":
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.device_count(), float(torch.cuda.get_device_properties(0).total_memory)
    return "cpu", 1, host_memory_bytes()


def host_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _with(config: VLARLConfig, **sections: dict) -> VLARLConfig:
    changed = config
    for section, values in sections.items():
        if section == "top":
            changed = changed.model_copy(update=values)
        else:
            changed = changed.model_copy(
                update={section: getattr(changed, section).model_copy(update=values)}
            )
    return changed


def cheapest_fix(plan: Plan) -> str:
    """The cheapest change under which the plan fits, each tried with the largest micro-batch
    that then fits: micro-batch alone, LoRA rank, LoRA instead of full fine-tuning, gradient
    checkpointing, FSDP on the same GPUs, more GPUs."""
    cfg, n = plan.config, plan.gpus
    current = cfg.ppo.micro_batch_size
    micros = [current]
    while micros[-1] > 1:
        micros.append(micros[-1] // 2)

    def first_fit(config: VLARLConfig, gpus: int = n, strategy: str = plan.strategy) -> str | None:
        for micro in micros:
            candidate = _with(config, ppo={"micro_batch_size": micro})
            quiet = plan_for_devices(candidate, gpus, plan.device_bytes / GB, strategy, plan.device_kind)
            if quiet.fits:
                return "" if micro == current else f"ppo.micro_batch_size: {micro} (was {current})"
        return None

    changes: list[tuple[str, VLARLConfig, int, str]] = []
    if cfg.lora.enabled:
        for rank in (cfg.lora.rank // 4, cfg.lora.rank // 16):
            if 1 <= rank < cfg.lora.rank:
                changes.append((f"set lora.rank: {rank} (was {cfg.lora.rank})",
                                _with(cfg, lora={"rank": rank}, top={"lora_rank": rank}), n, plan.strategy))
    else:
        changes.append((f"set lora.enabled: true (rank {cfg.lora.rank}) instead of full fine-tuning",
                        _with(cfg, lora={"enabled": True}), n, plan.strategy))
    if not cfg.model.gradient_checkpointing:
        changes.append(("set model.gradient_checkpointing: true (about a third more learner compute)",
                        _with(cfg, model={"gradient_checkpointing": True}), n, plan.strategy))
    if plan.device_kind == "gpu":
        if plan.strategy != "fsdp" and n > 1:
            changes.append((f"set distributed_strategy: fsdp on the same {n} GPUs", cfg, n, "fsdp"))
        for more in (2, 4, 8, 16, 32, 64):
            if more > n:
                for strategy in ("ddp", "fsdp"):
                    changes.append((
                        f"use {more} GPUs with distributed_strategy: {strategy} "
                        f"(torchrun --nproc-per-node {min(more, 8)}{' per node' if more > 8 else ''})",
                        _with(cfg, top={"distributed_strategy": strategy}), more, strategy,
                    ))
    micro_only = first_fit(cfg)
    if micro_only:
        return f"set {micro_only}"
    for text, config, gpus, strategy in changes:
        micro = first_fit(config, gpus, strategy)
        if micro is not None:
            return text + (f" and {micro}" if micro else "")
    return "no single change fits: combine LoRA, gradient checkpointing and micro-batch 1 with more memory"


def plan_for_devices(config: VLARLConfig, gpus: int, gpu_memory_gb: float, strategy: str,
                     kind: str) -> Plan:
    """The memory terms for a given device set (no detection, no time, no suggestion)."""
    plan = Plan(config, count_parameters(config), gpus, gpu_memory_gb * GB, kind, strategy,
                hardware=GPU_ASSUMED if kind == "gpu" else CPU_ASSUMED)
    _learner_terms(plan)
    _rollout_terms(plan)
    return plan


def _term_lines(terms: list[Term], gb: Callable[[float], str], verbose: bool) -> list[str]:
    """One line a memory term; with ``verbose`` its formula under it."""
    lines = []
    for term in terms:
        lines.append(f"  {term.name:<40}{gb(term.bytes)}")
        if verbose:
            lines.append(f"      = {term.formula}")
    return lines


def render(plan: Plan, verbose: bool = False, source: str = "") -> str:
    """The breakdown, one term a line; the last line is machine-readable."""
    m, cfg = plan.model, plan.config
    gb = lambda b: f"{b / GB:8.3f} GB"  # noqa: E731
    trainable, _ = trainable_params(cfg, m)
    device = (f"{plan.gpus} x GPU of {plan.device_bytes / GB:.0f} GB, {plan.strategy.upper()}"
              if plan.device_kind == "gpu" else f"CPU, host memory {plan.device_bytes / GB:.1f} GB")
    lines = [f"plan {source}: {m.description}".strip(), f"devices: {device}"]
    parts = ", ".join(f"{k} {_count(v)}" for k, v in m.components.items())
    lines.append(f"parameters: {m.total:,} ({parts}); trainable {trainable:,}")
    lines.append("learner memory per device:")
    lines += _term_lines(plan.learner, gb, verbose)
    act_now = next(t.bytes for t in plan.learner if t.name.startswith("activations"))
    if gradient_checkpointing(cfg):
        lines.append(f"  (without gradient checkpointing the activations would be "
                     f"{activation_bytes(cfg, m, _micro(plan), False) / GB:.3f} GB)")
    else:
        lines.append(f"  (with gradient checkpointing: {plan.activations_checkpointed / GB:.3f} GB "
                     f"instead of {act_now / GB:.3f} GB)")
    lines.append(f"  {'total':<40}{gb(plan.learner_bytes)}")
    lines.append("rollout memory (policy replicas, simulators, buffer):")
    lines += _term_lines(plan.rollout, gb, verbose)
    lines.append(f"  {'total':<40}{gb(plan.rollout_bytes)}")
    lines.append(f"seconds per update (assumed: {plan.hardware.name}; "
                 f"{plan.hardware.env_steps_per_s:.0f} env steps/s per rollout process):")
    for term in plan.seconds:
        lines.append(f"  {term.name:<40}{term.bytes:8.1f} s")
        if verbose:
            lines.append(f"      = {term.formula}")
    lines.append(f"  {'total (upper bound: every episode at max_steps)':<40}"
                 f"{sum(t.bytes for t in plan.seconds):8.1f} s")
    usable = USABLE_FRACTION * plan.device_bytes
    verdict = "fits" if plan.fits else "does not fit"
    lines.append(f"{verdict}: {plan.needed_on_device / GB:.2f} GB needed on device 0 of "
                 f"{usable / GB:.2f} GB usable ({USABLE_FRACTION:.0%} of {plan.device_bytes / GB:.1f} GB)")
    if plan.suggestion:
        lines.append(f"cheapest change that fits: {plan.suggestion}")
    if verbose:
        lines.append("sources: " + "; ".join(m.sources))
    lines.append(f"learner_gb_per_device={plan.learner_bytes / GB:.3f} "
                 f"rollout_gb={plan.rollout_bytes / GB:.3f} fits={str(plan.fits).lower()}")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def _micro(plan: Plan) -> int:
    cfg = plan.config
    return min(cfg.ppo.micro_batch_size, max(1, cfg.ppo.minibatch_size // plan.gpus))


def check_fits_device(config: VLARLConfig, device_type: str, gpus: int = 1) -> str | None:
    """For the trainer's preflight: a one-line refusal when the run clearly cannot fit, else None.

    "Clearly": the estimate exceeds the whole device by ``CLEARLY_TOO_BIG``; closer calls go
    ahead (the estimate is a model, and ``plan`` shows it in full).
    """
    if device_type == "cuda":
        import torch

        kind, memory = "gpu", float(torch.cuda.get_device_properties(0).total_memory)
    else:
        kind, memory = "cpu", host_memory_bytes()
    plan = plan_for_devices(config, gpus, memory / GB, config_strategy(config), kind)
    if plan.needed_on_device <= CLEARLY_TOO_BIG * memory:
        return None
    on_disk = checkpoint_parameter_count(weights_folder(config))
    if on_disk is not None and not 0.9 <= on_disk / plan.model.total <= 1.1:
        log.warning(
            "plan: %s holds %d parameters, not the %d of the %s architecture the planner knows; "
            "its memory is not checked", weights_folder(config), on_disk, plan.model.total,
            plan.model.name,
        )
        return None
    return (
        f"the planner estimates {plan.needed_on_device / GB:.1f} GB on this {kind.upper()} "
        f"({memory / GB:.1f} GB): this run cannot fit; {cheapest_fix(plan)} "
        f"(details: python -m vla_rl_lib plan --config <your config> --verbose)"
    )


def checkpoint_parameter_count(path: str | None) -> int | None:
    """Parameters stored in a local checkpoint's ``*.safetensors`` files, read from their
    headers only (no weights are loaded); None when ``path`` is not such a local folder."""
    if not path or not os.path.isdir(path):
        return None
    import json
    import struct
    from pathlib import Path

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:  # not a safetensors file: the loader names it; no count here
                return None
            (length,) = struct.unpack("<Q", head)
            try:
                header = json.loads(handle.read(length))
            except ValueError:  # a damaged header: the loader names it; no count here
                return None
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def weights_folder(config: VLARLConfig) -> str | None:
    """The local folder holding the run's base weights: ``pretrained_checkpoint``, or the base
    an ``sft_checkpoint`` names in its ``policy_config.json`` (an adapter references its base)."""
    if config.pretrained_checkpoint:
        return config.pretrained_checkpoint
    if not config.sft_checkpoint:
        return None
    import json
    from pathlib import Path

    saved = Path(config.sft_checkpoint) / "policy_config.json"
    if not saved.is_file():
        return None
    base = json.loads(saved.read_text()).get("base_model")
    if base is None:  # merged weights in the SFT folder itself
        return config.sft_checkpoint
    return str(Path(config.sft_checkpoint) / base)  # an absolute base stays absolute
