"""What the Jupyter notebooks need beyond the rest of the library.

The notebooks in ``notebooks/`` stay thin: each cell calls one of these functions (or one
from ``vla_rl_lib.display`` / ``vla_rl_lib.training``) and shows its result.

Parameters -> config
--------------------
A notebook's ``parameters`` cell (papermill) declares every top-level key of
``VLARLConfig`` with the default ``None``, every section (``rollout``, ``ppo``, ...) as a
dict (default ``{}``), a few CLI-style shortcuts (``simulator``, ``learning_rate``, ...)
and ``template`` / ``config``. ``config_from_notebook_parameters`` turns them into the
same ``VLARLConfig`` the command line builds:

* the base is the YAML file ``config`` when given, else ``params/<template>.yaml``;
* only values the user set override it: a top-level ``None`` means "keep the file's
  value"; a section dict changes only the keys it holds;
* ``papermill -f params/fast.yaml`` injects every top-level key of the YAML (sections as
  whole dicts), so a top-level key or a shortcut wins over the same setting inside a
  section dict: ``-f params/fast.yaml -p learning_rate 1e-3`` trains at 1e-3.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vla_rl_lib.config import (
    KEY_ALIASES,
    NOTEBOOK_SHORTCUTS,
    SECTIONS,
    TEMPLATE_NAMES,
    ConfigError,
    VLARLConfig,
    apply_overrides,
    field_info,
    load_config,
    load_template,
    shortcuts,
    template_dir,
)
from vla_rl_lib.metrics import upgrade_eval_keys

# CLI-style names a notebook may use for section keys; the CLI maps them the same way.
SHORTCUTS: dict[str, str] = {name: shortcuts()[name] for name in NOTEBOOK_SHORTCUTS}


def top_level_keys() -> list[str]:
    """The scalar top-level keys of ``VLARLConfig`` (sections excluded)."""
    return [name for name in VLARLConfig.model_fields if name not in SECTIONS]


def parameter_names() -> list[str]:
    """Every name a notebook's parameters cell declares for the config, in cell order."""
    return ["template", "config", *top_level_keys(), *SECTIONS, *SHORTCUTS]


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The config parameters out of a notebook's globals (``notebook_parameters(globals())``)."""
    missing = [name for name in parameter_names() if name not in namespace]
    if missing:
        raise NameError(
            f"the parameters cell does not define {missing}; copy the parameters cell of "
            "notebooks/02_train.ipynb (it declares every config key)"
        )
    return {name: namespace[name] for name in parameter_names()}


def _overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides: section dicts first, then top-level keys and shortcuts on top."""
    known = set(top_level_keys()) | set(SECTIONS) | set(SHORTCUTS)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown notebook parameter(s) {unknown}; parameters are the config's top-level keys, "
            f"its sections {list(SECTIONS)} as dicts, and the shortcuts {list(SHORTCUTS)}"
        )
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        values = params.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"notebook parameter {section!r} must be a dict of {section} settings, e.g. "
                f"{section} = {{...}}; got {values!r}"
            )
        flat.update({f"{section}.{key}": value for key, value in values.items()})
    for name, value in params.items():
        if value is None or name in SECTIONS:
            continue
        flat[SHORTCUTS.get(name, name)] = value
        if name in KEY_ALIASES:  # the top-level alias wins over the section's copy
            flat[KEY_ALIASES[name]] = value
    for alias, dotted in KEY_ALIASES.items():
        if dotted in flat and alias not in flat:
            flat[alias] = flat[dotted]
    return flat


def config_from_notebook_parameters(
    template: str | None = None,
    config: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] = False,
    **params: Any,
) -> VLARLConfig:
    """The validated config for a notebook run; raises ``ConfigError`` naming a bad key.

    ``config`` (a YAML path) is the base when given, else ``params/<template>.yaml``
    (``"default"`` when ``template`` is None). ``params`` are the parameters cell's values.
    ``resume`` a checkpoint directory, as ``train --resume PATH``: without ``config`` its own
    ``config.yaml`` is the base (the template is not used), and only the parameters the user
    set change it (e.g. ``num_updates`` to run longer).
    """
    if not isinstance(resume, bool) and config is None:
        from vla_rl_lib.training.cli import resume_config_path

        config = resume_config_path(str(resume), flag="resume")
    base = load_config(config) if config is not None else load_template(template or "default")
    overrides = _overrides(params)
    return apply_overrides(base, overrides) if overrides else base


# ---------------------------------------------------------------- the parameters cell

PARAMETERS_HEADER = """\
# Parameters (papermill), generated from the config schema (vla_rl_lib.notebook.write_parameter_cells).
# A config key left at None keeps the value of the template/config file; a section dict changes
# only the keys it holds. Run `papermill --help-notebook` for this list.
"""
NOTEBOOK_OWN = "# This notebook's own settings (not config keys):\n"


def _cell_type(annotation: Any) -> str:
    """How the cell annotates a key: papermill shows it in ``--help-notebook``."""
    from vla_rl_lib.config import type_name

    name = type_name(annotation).replace(" or None", "").replace("None or ", "")
    return "list" if name.startswith("list") else name


def _help(text: str) -> str:
    """A description as a cell comment: papermill cannot parse a comment holding '='."""
    return re.sub(r"\s*=\s*", ": ", text)


def config_parameter_lines() -> str:
    """The config part of a notebook's parameters cell: template, config, every top-level key,
    every section and the shortcuts, each commented with the schema's description."""
    lines = [
        PARAMETERS_HEADER,
        f'template: str = "fast"  # base parameter set params/<template>.yaml: {" | ".join(TEMPLATE_NAMES)}\n',
        "config: Optional[str] = None  # a YAML config file to start from instead of the template\n",
    ]
    for key in top_level_keys():
        info = field_info(key)
        lines.append(f"{key}: Optional[{_cell_type(info.annotation)}] = None  # {_help(info.description)}\n")
    for section, cls in SECTIONS.items():
        first = list(cls.model_fields)[:2]
        example = ", ".join(f"{k!r}: {cls.model_fields[k].default!r}" for k in first)
        lines.append(f"{section}: dict = {{}}  # {cls.__doc__} Keys to change, e.g. {{{_help(example)}}}\n")
    for short, key in SHORTCUTS.items():
        info = field_info(key)
        lines.append(
            f"{short}: Optional[{_cell_type(info.annotation)}] = None  # shortcut for {key}: {_help(info.description)}\n"
        )
    return "".join(lines)


def _parameters_cell(notebook: dict[str, Any]) -> dict[str, Any]:
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def parameter_cell_source(path: str | os.PathLike[str]) -> str:
    """The source of a notebook's ``parameters`` cell."""
    return "".join(_parameters_cell(json.loads(Path(path).read_text()))["source"])


def write_parameter_cells(paths: list[Path] | None = None) -> list[Path]:
    """Regenerate the config part of each notebook's parameters cell from the schema, keeping
    the notebook's own settings (below ``NOTEBOOK_OWN``). Returns the notebooks changed."""
    from vla_rl_lib.utils import write_text_atomic

    paths = paths or [template_dir().parent / "notebooks" / f"{n}.ipynb" for n in ("01_setup", "02_train")]
    changed = []
    for path in paths:
        notebook = json.loads(path.read_text())
        cell = _parameters_cell(notebook)
        own = "".join(cell["source"]).partition(NOTEBOOK_OWN)[2]
        source = config_parameter_lines() + NOTEBOOK_OWN + own
        if source != "".join(cell["source"]):
            cell["source"] = source.splitlines(keepends=True)
            write_text_atomic(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed


def use_project_root() -> Path:
    """Make the repository root the working directory, as for the CLI, and return it.

    JupyterLab starts a kernel in the notebook's folder; relative paths in a config
    (``outputs``, ``outputs/demos``) must mean the same as on the command line.
    """
    root = template_dir().parent
    os.chdir(root)
    return root


def configure_progress(interactive: bool) -> None:
    """Turn the Hugging Face libraries' own progress bars on only for interactive sessions.

    They use ``tqdm.auto``, which in a kernel is a widget whose saved state is frozen at 0%
    (papermill, nbval); the library's own bars follow ``interactive`` already.
    """
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    if interactive:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        disable_progress_bars()


def run_dir(cfg: VLARLConfig) -> Path:
    """``<output_dir>/<experiment_name>``: the experiment folder. Each training run gets a
    new folder inside it (``vla_rl_lib.training.runs``)."""
    return Path(cfg.output_dir) / cfg.experiment_name


def config_rows(cfg: VLARLConfig) -> list[dict[str, Any]]:
    """The settings that shape a run, as table rows (setting, value)."""
    r, p, m = cfg.rollout, cfg.ppo, cfg.model
    settings = {
        "experiment_name": cfg.experiment_name,
        "experiment folder": f"{run_dir(cfg)}/ (a new run folder inside it per run)",
        "model": m.name,
        "start from": cfg.sft_checkpoint
        or cfg.pretrained_checkpoint
        or (f"warm start: {cfg.sft.num_demos} demos" if cfg.sft.num_demos else "random init"),
        "simulator": f"{r.simulator} ({r.env_id}, {r.backend})",
        "algorithm": p.algorithm,
        "num_updates": cfg.num_updates,
        "episodes per update": r.num_rollouts_per_update,
        "parallel envs": r.num_parallel_envs,
        "max_steps": r.max_steps,
        "learning_rate": p.learning_rate,
        "eval": f"every {cfg.eval_interval} updates, {cfg.num_eval_episodes} episodes"
        if cfg.eval_interval
        else "off",
        "seed": cfg.seed,
        "device": cfg.device,
    }
    return [{"setting": key, "value": value} for key, value in settings.items()]


# ---------------------------------------------------------------- environment report

_PACKAGES = (
    "torch", "transformers", "peft", "tokenizers", "mujoco", "gymnasium", "numpy",
    "matplotlib", "ipywidgets", "papermill", "mani-skill", "genesis-world", "ray",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gl_renderer() -> str:
    """The OpenGL renderer MuJoCo draws with (e.g. ``llvmpipe`` on a CPU), or why there is none."""
    import mujoco

    try:
        context = mujoco.GLContext(8, 8)
    except Exception as error:  # MuJoCo raises a bare Exception when no GL backend loads
        return f"no OpenGL context ({error}); set MUJOCO_GL=egl (or osmesa)"
    try:
        context.make_current()
        from OpenGL import GL

        return " | ".join(
            GL.glGetString(name).decode() for name in (GL.GL_VENDOR, GL.GL_RENDERER, GL.GL_VERSION)
        )
    finally:
        context.free()


def environment_report() -> list[dict[str, str]]:
    """Rows (item, value): Python and package versions, rendering backend, CPU and GPU."""
    import torch

    rows = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        **{package: _version(package) for package in _PACKAGES},
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "(unset: lift sets egl)"),
        "OpenGL": gl_renderer(),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "(unset)"),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical cores",
        "torch threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            rows[f"GPU {index}"] = f"{props.name}, {props.total_memory / 1024**3:.0f} GiB"
        rows["CUDA"] = str(torch.version.cuda)
    else:
        rows["GPU"] = "none visible to torch (CPU only)"
    return [{"item": key, "value": value} for key, value in rows.items()]


# ---------------------------------------------------------------- simulator and model


def camera_views(cfg: VLARLConfig, size: int | None = None) -> dict[str, np.ndarray]:
    """One frame per camera of a freshly reset episode, at ``rollout.media_size`` by default."""
    size = size or cfg.rollout.media_size
    from lift import make_env
    from lift.types import CAMERAS

    r = cfg.rollout
    env = make_env(
        r.simulator, r.env_id, num_envs=1, backend=r.backend, camera=r.camera,
        image_size=r.image_size, control_mode=r.control_mode, max_episode_steps=r.max_steps,
        auto_reset=False, seed=cfg.seed,
    )  # fmt: skip
    try:
        env.reset(seed=cfg.seed)
        return {camera: env.render(camera, [0], (size, size))[0] for camera in CAMERAS}
    finally:
        env.close()


def labelled_row(images: Mapping[str, np.ndarray]) -> bytes:
    """PNG of equally sized RGB images side by side, each captioned with its name."""
    from PIL import Image, ImageDraw

    arrays = list(images.values())
    if not arrays:
        raise ValueError("labelled_row needs at least one image")
    h, w = arrays[0].shape[:2]
    if any(a.shape[:2] != (h, w) for a in arrays):
        raise ValueError(f"images must share one size; got {[a.shape for a in arrays]}")
    row = Image.new("RGB", (len(arrays) * (w + 4) - 4, h + 14), "white")
    draw = ImageDraw.Draw(row)
    for slot, (name, array) in enumerate(images.items()):
        row.paste(Image.fromarray(array), (slot * (w + 4), 0))
        draw.text((slot * (w + 4) + 2, h + 1), name, fill="black")
    buf = io.BytesIO()
    row.save(buf, format="PNG")
    return buf.getvalue()


def build_vla(cfg: VLARLConfig) -> Any:
    """The configured VLA: the tiny model built from its sizes, an SFT checkpoint, or OpenVLA.

    OpenVLA is loaded from local files only; without them the library's
    ``FileNotFoundError`` says where to get the weights.
    """
    from vla_rl_lib.policy.hf_policy import HFVLAPolicy, build_policy
    from vla_rl_lib.training.policy_factory import DTYPES, lora_settings, tiny_vla_config

    m = cfg.model
    if m.name == "openvla":
        from vla_rl_lib.policy.openvla import (
            OpenVLAPolicy,
            build_openvla_policy,
            openvla_model_loader,
        )

        dtype = DTYPES[m.dtype]
        if cfg.sft_checkpoint:
            return OpenVLAPolicy.from_checkpoint(
                cfg.sft_checkpoint, decoding=m.decoding, unnorm_key=m.unnorm_key, dtype=dtype,
                model_loader=openvla_model_loader(tuple(cfg.trust_remote_code), dtype=dtype),
            )  # fmt: skip
        return build_openvla_policy(
            cfg.pretrained_checkpoint, decoding=m.decoding, unnorm_key=m.unnorm_key, dtype=dtype,
            trust_remote_code_allowlist=tuple(cfg.trust_remote_code), lora=lora_settings(cfg),
            seed=cfg.seed,
        )  # fmt: skip
    if cfg.sft_checkpoint:
        return HFVLAPolicy.from_checkpoint(cfg.sft_checkpoint, decoding=m.decoding)
    return build_policy(
        tiny_vla_config(cfg), lora=lora_settings(cfg), seed=cfg.seed, decoding=m.decoding
    )


def model_rows(policy: Any) -> list[dict[str, Any]]:
    """Size and trainable share of a policy (a ``VLAPolicy``, an ``nn.Module``), as table rows."""
    params = list(policy.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return [
        {"item": "model class", "value": type(getattr(policy, "model", policy)).__name__},
        {"item": "parameters", "value": total},
        {"item": "trainable parameters", "value": trainable},
        {"item": "decoding", "value": getattr(policy, "decoding", "-")},
        {"item": "LoRA", "value": bool(getattr(policy, "use_lora", False))},
    ]


def sft_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The SFT summary of ``run_warm_start`` (``save_shared_sft``) as table rows (per-epoch history left out)."""
    skip = {"history", "epoch_losses"}
    rows = [{"item": k, "value": v} for k, v in result.items() if k not in skip]
    losses = result.get("epoch_losses") or []
    if losses:
        rows.append(
            {"item": "loss first -> last epoch", "value": f"{losses[0]:.4g} -> {losses[-1]:.4g}"}
        )
    return rows


# ---------------------------------------------------------------- training


@dataclass
class NotebookRun:
    summary: dict[str, Any]
    last_eval: Any  # EvalResult of the final evaluation, or None when evaluation is off
    run_dir: Path


def train_with_live_plot(
    cfg: VLARLConfig,
    *,
    resume: bool | str = False,
    interactive: bool = False,
    throttle_s: float = 2.0,
) -> NotebookRun:
    """Train with a live plot (``plots.draw_training``) updated in place (see ``LivePlot``).

    Each call writes a new run folder (printed first); ``resume`` is True for the newest
    run of the experiment or a checkpoint directory. The plot redraws at most every
    ``throttle_s`` seconds and once at the end, so a saved notebook holds its final state as
    one PNG. ``interactive`` turns on widget progress bars.
    """
    from vla_rl_lib.display import LivePlot
    from vla_rl_lib.display.plots import draw_training
    from vla_rl_lib.training.trainer import Trainer

    live = LivePlot(throttle_s=throttle_s, draw=draw_training)
    evals: list[Any] = []
    trainer: Trainer | None = None

    def on_eval(result: Any) -> None:
        evals.append(result)
        live.update({"update": result.update, "env_steps": trainer.env_steps, **result.record()})

    try:
        trainer = Trainer(
            cfg, resume=resume, progress=interactive, on_update=live.update, on_eval=on_eval
        )
        print(f"run folder: {trainer.run_dir}", flush=True)
        summary = trainer.train()
    finally:
        if trainer is not None:
            trainer.close()
        live.close()
    return NotebookRun(
        summary=summary, last_eval=evals[-1] if evals else None, run_dir=trainer.run_dir
    )


def summary_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run summary as table rows; a run without evaluation says so instead of a number."""
    from vla_rl_lib.training.trainer import NO_EVALUATION

    return [
        {"metric": key,
         "value": NO_EVALUATION if key == "best_eval_success" and value is None else value}
        for key, value in summary.items()
    ]


def run_files(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The top-level entries of a run folder (checkpoints, metrics, plots) with their sizes."""
    rows = []
    for path in sorted(Path(directory).iterdir()):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        rows.append(
            {"path": str(path) + ("/" if path.is_dir() else ""), "kB": round(size / 1024, 1)}
        )
    return rows


# ---------------------------------------------------------------- evaluation and analysis


def find_checkpoint(directory: str | os.PathLike[str]) -> Path:
    """A run's best checkpoint, else its latest; a checkpoint directory is returned as is.

    An experiment folder means its newest run folder (from before run folders: itself).
    """
    from vla_rl_lib.training.runs import latest_run

    directory = Path(directory)
    if (directory / "trainer_state.json").is_file():
        return directory
    latest = latest_run(directory)
    for run in (directory, *([latest] if latest is not None else [])):
        for name in ("checkpoint_best", "checkpoint_latest"):
            if (run / name / "trainer_state.json").is_file():
                return run / name
    raise FileNotFoundError(
        f"no checkpoint in {directory}: expected checkpoint_best/ or checkpoint_latest/ with a "
        "trainer_state.json; train first (notebooks/02_train.ipynb or python -m vla_rl_lib train) "
        "or pass checkpoint=<a checkpoint directory>"
    )


def success_and_failure(episodes: list[Any]) -> dict[str, Any]:
    """The first recorded successful and failed episode (a key is absent when there is none)."""
    picked: dict[str, Any] = {}
    for episode in episodes:
        picked.setdefault("success" if episode.success else "failure", episode)
    return picked


def evaluate_each(
    checkpoint: str | os.PathLike[str],
    env_ids: list[str] | None = None,
    splits: str | list[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``evaluate_checkpoint`` once per environment id, keyed by id (``None``/empty: the
    checkpoint's own environment, keyed ``"checkpoint env"``). With ``splits`` (``"all"``, a
    comma list or a list of ``lift.list_splits`` names) each env is evaluated on those splits,
    the same seeds on each, keyed ``"<env> <split>"``."""
    from vla_rl_lib.training.evaluate import evaluate_checkpoint

    targets = {env_id: {"env_id": env_id} for env_id in env_ids} if env_ids else {"checkpoint env": {}}
    if not splits:
        return {label: evaluate_checkpoint(checkpoint, **env, **kwargs) for label, env in targets.items()}
    return {
        f"{label} {split}": result
        for label, env in targets.items()
        for split, result in evaluate_checkpoint(checkpoint, splits=splits, **env, **kwargs).by_split.items()
    }


def eval_rows(result: Any) -> list[dict[str, Any]]:
    """One table row per evaluated split (a ``SplitResults``), or the one row of an ``EvalResult``."""
    if hasattr(result, "rows"):
        return result.rows()
    low, high = result.interval
    return [{
        "episodes": result.episodes, "successes": result.successes,
        "success_rate": result.success_rate, "wilson95_low": low, "wilson95_high": high,
    }]  # fmt: skip


def discover_runs(output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Run folders under ``output_dir`` holding a metrics.jsonl, named ``<experiment>/<run>``
    (``<experiment>`` for a folder from before run folders), sorted by name; links skipped."""
    root = Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"output folder {root} does not exist; train a run first")
    found = [*root.glob("*/metrics.jsonl"), *root.glob("*/*/metrics.jsonl")]
    runs = {
        str(p.parent.relative_to(root)): p.parent
        for p in found
        if not p.parent.is_symlink()
    }
    runs = dict(sorted(runs.items()))
    if not runs:
        raise FileNotFoundError(
            f"no run under {root} holds a metrics.jsonl; train one (notebooks/02_train.ipynb) "
            "or pass runs=[<run folder>, ...]"
        )
    return runs


def name_runs(
    paths: list[str | os.PathLike[str]], output_dir: str | os.PathLike[str] = "outputs"
) -> dict[str, Path]:
    """Given run folders (links resolved), named by their path
    relative to ``output_dir`` (``<experiment>/<run>``), else by the path as given."""
    root = Path(output_dir).resolve()
    named: dict[str, Path] = {}
    for given in paths:
        folder = Path(given).resolve()
        name = str(folder.relative_to(root)) if folder.is_relative_to(root) else str(given)
        named[name] = folder
    return named


def seed_groups(runs: Mapping[str, str | os.PathLike[str]]) -> dict[str, list[str]]:
    """Runs that differ only in their seed (and name), grouped: ``{label: [run names]}``.

    Each run folder's ``config.yaml`` is compared with ``seed``, ``experiment_name``,
    ``output_dir`` and the logging keys left out; the label is the experiments' names.
    """
    import yaml

    ignored = {"seed", "experiment_name", "output_dir", "use_wandb", "wandb_project", "log_interval"}
    groups: dict[str, list[str]] = {}
    names: dict[str, set[str]] = {}
    for name, folder in runs.items():
        path = Path(folder) / "config.yaml"
        settings = yaml.safe_load(path.read_text()) if path.is_file() else {"run": name}
        key = repr(sorted((k, repr(v)) for k, v in settings.items() if k not in ignored))
        groups.setdefault(key, []).append(name)
        names.setdefault(key, set()).add(str(settings.get("experiment_name", name)))
    labels: dict[str, list[str]] = {}
    for key, members in groups.items():
        label = "+".join(sorted(names[key]))
        while label in labels:
            label += "'"
        labels[label] = members
    return labels


def final_rows(runs: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per run: updates, env steps, last train success, the last evaluation (val, test) and
    the val-best one (old runs' eval_* read as val, see ``metrics.upgrade_eval_keys``)."""
    rows = []
    for name, records in runs.items():
        records = [upgrade_eval_keys(r) for r in records]  # old runs logged eval_*
        train = [r for r in records if "train/success_rate" in r]
        evals = [r for r in records if "val/success" in r]
        last_train, last_eval = (train or [{}])[-1], (evals or [{}])[-1]
        scored = [r for r in evals if r["val/success"] is not None]
        best = max(scored, key=lambda r: r["val/success"]) if scored else {}
        rows.append({
            "run": name,
            "updates": last_train.get("update"),
            "env_steps": last_train.get("env_steps"),
            "train/success_rate": last_train.get("train/success_rate"),
            "val/success": last_eval.get("val/success"),
            "test/success": last_eval.get("test/success"),
            "test_low": last_eval.get("test/success_low"),
            "test_high": last_eval.get("test/success_high"),
            "best_val": best.get("val/success"),
            # test success of the evaluation checkpoint_best was chosen at (first val maximum)
            "test_at_best_val": best.get("test/success"),
        })  # fmt: skip
    return rows


def show_png(png: bytes) -> None:
    """Show PNG bytes inline (a notebook) or say how many bytes were drawn (a terminal)."""
    from vla_rl_lib.display import in_notebook

    if not in_notebook():
        print(f"(PNG, {len(png)} bytes: shown only in a notebook)")
        return
    from IPython.display import Image, display

    display(Image(data=png, format="png"))
