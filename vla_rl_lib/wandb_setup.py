"""Is W&B ready to log? Answered before a run builds anything, without touching the network.

``wandb.init`` in online mode with no API key fails only after the model, the simulator and
perhaps a warm start have been built, with a multi-line traceback. ``check_wandb_ready``
answers the same question from what W&B itself reads (``WANDB_MODE``, ``WANDB_API_KEY``,
the netrc entry ``wandb login`` writes, ``wandb offline``'s settings file) so the run stops
first, in one line.
"""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

LOCAL_MODES = ("offline", "dryrun", "disabled")
FIX = "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to log to local files"


class WandbSetupError(ValueError):
    """W&B cannot log as configured; the message says how to fix it."""


def wandb_mode() -> str:
    """``WANDB_MODE``, else the ``mode`` that ``wandb offline``/``wandb online`` saved, else online."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"].strip().lower()
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    for settings in (Path("wandb") / "settings", config_dir / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except configparser.Error:
            continue
        if parser.has_option("default", "mode"):
            return parser.get("default", "mode").strip().lower()
    return "online"


def has_api_key() -> bool:
    """An API key in the environment or in the netrc entry ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def check_wandb_ready() -> None:
    """Raise ``WandbSetupError`` (one line) when ``use_wandb`` cannot work here."""
    try:
        import wandb  # noqa: F401
    except ImportError as exc:
        raise WandbSetupError(
            "use_wandb needs the wandb package: pip install -e .[wandb] (it is in the dev extras); "
            "or set use_wandb: false (metrics.jsonl and TensorBoard do not need it)"
        ) from exc
    mode = wandb_mode()
    if mode not in LOCAL_MODES and not has_api_key():
        raise WandbSetupError(f"--use-wandb: no W&B API key found (WANDB_MODE={mode}); {FIX}")
