"""Training metrics: one JSON object per line, mirrored to TensorBoard and optionally W&B.

`<run_dir>/metrics.jsonl` is the record of truth: notebooks, plots and run comparisons read
it back with `load_metrics`. Each record carries an integer ``"update"`` (the PPO update it
belongs to); several records may share an update (a training record and an eval record), but
updates never go backwards within a file. On resume from update k, `truncate_after(k)` drops
everything logged after the checkpoint so the curve continues exactly where it left off.

Non-finite floats (NaN, +inf, -inf) are written as JSON ``null``: the file stays strict JSON
that any tool can parse, and readers treat ``null`` as "no value at this point".
"""

from __future__ import annotations

import json
import math
import numbers
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vla_rl_lib.utils import write_text_atomic

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
WANDB_RUN_ID_FILENAME = "wandb_run_id.txt"
UPDATE_KEY = "update"

Record = dict[str, Any]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for the default z).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n,
    which is exactly where small evaluation runs of a robot policy tend to land.
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}"
        )
    if z <= 0:
        raise ValueError(f"wilson_interval needs z > 0, got z={z}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At p == 0 or p == 1 center and half agree analytically; clamp the rounding residue.
    return max(0.0, center - half), min(1.0, center + half)


def json_safe(value: Any, key: str = "?") -> Any:
    """Convert one metric value to a JSON-safe Python scalar.

    numpy and torch scalars (and one-element arrays/tensors) become int/float/bool;
    non-finite floats become None. Anything else that is not a str/None raises TypeError.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)  # covers numpy integer scalars
    if isinstance(value, numbers.Real):
        as_float = float(value)  # covers numpy floating scalars
        return as_float if math.isfinite(as_float) else None
    item = getattr(value, "item", None)  # numpy bool_, 0-d arrays, one-element torch tensors
    size = getattr(value, "size", None)
    numel = getattr(value, "numel", None)
    count = numel() if callable(numel) else size if isinstance(size, int) else None
    if callable(item) and count == 1:
        return json_safe(item(), key)
    raise TypeError(
        f"metric {key!r} has a value of type {type(value).__name__} that is not a scalar; "
        "log numbers, bools, strings or one-element arrays/tensors (call .mean() or .item() first)"
    )


def _parse_lines(path: Path, text: str) -> list[Record]:
    """Parse JSONL text into records.

    A final line without its newline that does not parse is a write torn by a crash: it is
    left out (with a warning) rather than failing, so a live run can be read while it writes.
    """
    records: list[Record] = []
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        is_unterminated_tail = lineno == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if is_unterminated_tail:
                warnings.warn(
                    f"{path}:{lineno}: ignoring an incomplete last line (a write cut off by a "
                    f"crash or still in progress): {line[:80]!r}",
                    stacklevel=3,
                )
                break
            raise ValueError(
                f"{path}:{lineno}: corrupt metrics line ({exc.msg}): {line[:120]!r}. "
                "Fix or delete that line; every line must be one JSON object."
            ) from exc
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}: "
                f"{line[:120]!r}. Fix or delete that line."
            )
        records.append(record)
    return records


def metrics_path(run_dir_or_file: str | os.PathLike[str]) -> Path:
    """`<run_dir>/metrics.jsonl` for a run directory, or the path itself for a file."""
    path = Path(run_dir_or_file)
    return path / METRICS_FILENAME if path.is_dir() else path


def load_metrics(run_dir_or_file: str | os.PathLike[str]) -> list[Record]:
    """Read every record of a run (a run directory or a metrics.jsonl path)."""
    path = metrics_path(run_dir_or_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"no metrics file at {path}; pass a run directory containing {METRICS_FILENAME} "
            "(written by MetricsWriter during training) or the path of the file itself"
        )
    records = _parse_lines(path, path.read_text(encoding="utf-8"))
    return [upgrade_eval_keys(record) for record in records]


# Runs from before per-split evaluation logged one held-out evaluation (train's distribution,
# its own seeds) as eval_*; readers see it under the key of the split that now plays that role.
OLD_EVAL_KEYS = {
    "eval_success": "val/success",
    "eval_success_low": "val/success_low",
    "eval_success_high": "val/success_high",
    "eval_episodes": "val/episodes",
}


def upgrade_eval_keys(record: Record) -> Record:
    """A record with the old ``eval_*`` keys renamed to their ``val/*`` keys (others unchanged)."""
    if not any(key in record for key in OLD_EVAL_KEYS):
        return record
    return {OLD_EVAL_KEYS.get(key, key): value for key, value in record.items()}


def load_runs(
    runs: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
) -> dict[str, list[Record]]:
    """Load several runs for comparison, keyed by name.

    A mapping gives the names; a sequence of paths is named by the run directory's name
    (with its parent prepended where two runs would otherwise share a name).
    """
    if isinstance(runs, Mapping):
        return {name: load_metrics(path) for name, path in runs.items()}
    paths = [Path(p) for p in runs]
    run_dirs = [metrics_path(p).parent for p in paths]
    names = [d.name for d in run_dirs]
    if len(set(names)) != len(names):
        names = [f"{d.parent.name}/{d.name}" for d in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"runs {[str(p) for p in paths]} have clashing names; pass a dict of name -> path"
        )
    return {name: load_metrics(path) for name, path in zip(names, paths, strict=True)}


def to_columns(
    records: Iterable[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """Records to columns of equal length (None where a record lacks a key); no pandas needed.

    Without `keys`, every key seen is a column, in order of first appearance.
    """
    records = list(records)
    if keys is None:
        keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in keys}


class MetricsWriter:
    """Append metric records to `<run_dir>/metrics.jsonl`, TensorBoard and (optionally) W&B.

    ``resume_from_update=k`` continues a run from its update-k checkpoint: records after k are
    dropped from the file and hidden from TensorBoard (purge_step), and W&B resumes the same run.
    Without it, a run directory that already holds records is refused rather than mixed into.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        resume_from_update: int | None = None,
        tensorboard: bool = True,
        use_wandb: bool = False,
        wandb_project: str | None = None,
        wandb_config: Mapping[str, Any] | None = None,
        wandb_run_name: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILENAME
        self._use_tensorboard = tensorboard
        self._tb = None
        self._tb_purge_step: int | None = None
        self._last_update: int | None = None
        self._file = None

        if resume_from_update is not None:
            self.truncate_after(resume_from_update)
        elif self.path.is_file():
            if load_metrics(self.path):
                raise FileExistsError(
                    f"{self.path} already holds records; pass resume_from_update=<checkpoint update> "
                    "to continue that run, or choose a new run directory"
                )
            write_text_atomic(self.path, "")  # no record in it, perhaps a torn line: start clean
        self._wandb_run = None
        if use_wandb:
            self._wandb_run = self._start_wandb(
                wandb_project, wandb_config, wandb_run_name, resume_from_update
            )
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    # -- writing --------------------------------------------------------------------------

    def log(self, record: Mapping[str, Any]) -> Record:
        """Write one record (must contain an int ``"update"``); returns the JSON-safe record."""
        if self._file is None:
            raise RuntimeError(
                f"MetricsWriter for {self.run_dir} is closed; create a new one to log"
            )
        if UPDATE_KEY not in record:
            raise KeyError(
                f"metric record needs an {UPDATE_KEY!r} key (the PPO update index); got keys {sorted(record)}"
            )
        safe = {str(k): json_safe(v, str(k)) for k, v in record.items()}
        update = safe[UPDATE_KEY]
        if not isinstance(update, int) or isinstance(update, bool):
            raise TypeError(f"{UPDATE_KEY!r} must be an int, got {record[UPDATE_KEY]!r}")
        if self._last_update is not None and update < self._last_update:
            raise ValueError(
                f"update went backwards ({update} after {self._last_update}) in {self.path}; "
                "when resuming pass resume_from_update=<checkpoint update> so later records are dropped"
            )
        self._file.write(json.dumps(safe, allow_nan=False) + "\n")
        self._file.flush()
        self._last_update = update

        numeric = {
            k: float(record[k])  # TensorBoard keeps NaN/inf, which JSON cannot
            for k, v in safe.items()
            if k != UPDATE_KEY
            and (isinstance(v, (int, float)) or (v is None and _is_nonfinite(record[k])))
        }
        if self._use_tensorboard and numeric:
            writer = self._tensorboard()
            for k, v in numeric.items():
                writer.add_scalar(k, v, global_step=update)
        if self._wandb_run is not None:
            self._wandb_run.log(safe)
        return safe

    def truncate_after(self, update: int) -> int:
        """Drop records with ``update > update`` (atomic rewrite); returns how many were dropped.

        TensorBoard events from later updates are purged when the writer next logs.
        """
        if self._file is not None:
            self._file.close()
        dropped = 0
        if self.path.is_file():
            records = _parse_lines(self.path, self.path.read_text(encoding="utf-8"))
            kept = [r for r in records if not _after(r, update, self.path)]
            dropped = len(records) - len(kept)
            write_text_atomic(
                self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            )
        self._last_update = update
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._tb_purge_step = update + 1
        if self._file is not None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return dropped

    def _tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_DIRNAME),
                purge_step=self._tb_purge_step,
                flush_secs=10,
            )
        return self._tb

    def _start_wandb(
        self,
        project: str | None,
        config: Mapping[str, Any] | None,
        name: str | None,
        resume_from_update: int | None,
    ):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(
                "use_wandb=True needs the wandb package: pip install -e .[wandb] "
                "(or set use_wandb=False: metrics.jsonl and TensorBoard do not need it)"
            ) from exc
        from vla_rl_lib.wandb_setup import FIX, WandbSetupError, check_wandb_ready

        check_wandb_ready()
        id_file = self.run_dir / WANDB_RUN_ID_FILENAME
        run_id = (
            id_file.read_text().strip()
            if resume_from_update is not None and id_file.is_file()
            else None
        )
        if run_id is None:
            run_id = uuid.uuid4().hex[:12]
            write_text_atomic(id_file, run_id + "\n")
        try:
            run = wandb.init(
                project=project,
                name=name or self.run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(self.run_dir),
                config=dict(config) if config is not None else None,
            )
        except wandb.errors.UsageError as exc:  # a key W&B rejects, or no key it could find
            message = " ".join(str(exc).split())
            raise WandbSetupError(f"W&B could not start a run ({message}); {FIX}") from exc
        # W&B's own step only grows; plotting against "update" keeps resumed curves aligned.
        run.define_metric(UPDATE_KEY)
        run.define_metric("*", step_metric=UPDATE_KEY)
        return run

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_nonfinite(value: Any) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _after(record: Record, update: int, path: Path) -> bool:
    value = record.get(UPDATE_KEY)
    if not isinstance(value, int):
        raise ValueError(
            f"{path}: record without an integer {UPDATE_KEY!r}: {record}; cannot truncate by update"
        )
    return value > update
