"""Vulkan for ManiSkill/SAPIEN rendering: the project's lavapipe, and the error that names the fix.

Rendering on a CPU needs Mesa 25's lavapipe (Debian 12's own is too old): ``make sims``
(scripts/install_vulkan_lavapipe.sh) puts it in ``.vulkan/`` at the project root, and
:func:`use_project_vulkan` points ``VK_ICD_FILENAMES`` at it unless you set that
variable yourself. Imports neither sapien nor mani_skill.
"""

from __future__ import annotations

import os
from pathlib import Path

# The vla-rl checkout that holds sim/lift/backends/ (an installed wheel has no .vulkan/ there).
PROJECT_ROOT = Path(__file__).resolve().parents[3]
PROJECT_ICD = PROJECT_ROOT / ".vulkan" / "lvp_icd.json"
RENDER_HELP = (
    "ManiSkill/SAPIEN could not render ({error}). On a machine without a GPU it needs "
    "Mesa 25's lavapipe: run `make sims` (it runs scripts/install_vulkan_lavapipe.sh and "
    "builds .venv-sims), or set VK_ICD_FILENAMES to a working Vulkan ICD json "
    "(now {icd!r}). Or use obs_mode='state', which does not render."
)


def use_project_vulkan() -> None:
    """Point Vulkan at the project's lavapipe when the user has not chosen an ICD."""
    if "VK_ICD_FILENAMES" not in os.environ and PROJECT_ICD.exists():
        os.environ["VK_ICD_FILENAMES"] = str(PROJECT_ICD)


def render_error(error: BaseException | str) -> RuntimeError:
    """The RuntimeError to raise when SAPIEN cannot render: what failed and how to fix it."""
    return RuntimeError(RENDER_HELP.format(error=error, icd=os.environ.get("VK_ICD_FILENAMES")))
