"""Display helpers shared by notebooks and the command line.

Images are PNG/GIF bytes drawn without pyplot; in a Jupyter kernel they are shown through
display handles that update in place, elsewhere as plain text or files. See each module:
plots (learning curves, diagnostics, run comparisons), live (LivePlot), media (filmstrips,
GIFs, videos), tables, progress_bars, widgets (interactive-only frame browser).
"""

from vla_rl_lib.display._output import in_notebook
from vla_rl_lib.display.live import LivePlot
from vla_rl_lib.display.media import (
    filmstrip,
    gif_bytes,
    save_gif,
    save_video,
    show_frames,
)
from vla_rl_lib.display.plots import (
    compare_runs,
    plot_diagnostics,
    plot_learning_curves,
    plot_seed_groups,
    plot_training,
)
from vla_rl_lib.display.progress_bars import HandleProgress, progress
from vla_rl_lib.display.tables import show_table, summary_table
from vla_rl_lib.display.widgets import frame_browser

__all__ = [
    "HandleProgress",
    "LivePlot",
    "compare_runs",
    "filmstrip",
    "frame_browser",
    "gif_bytes",
    "in_notebook",
    "plot_diagnostics",
    "plot_learning_curves",
    "plot_seed_groups",
    "plot_training",
    "progress",
    "save_gif",
    "save_video",
    "show_frames",
    "show_table",
    "summary_table",
]
