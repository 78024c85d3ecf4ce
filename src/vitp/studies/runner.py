"""What every study shares: one output directory, cells that are run once, and the exact commands.

A study is a list of *cells* (e.g. one source x budget x seed). A cell runs one or more ``vitp``
commands (``fit``, then ``validate`` of its checkpoint), each in this process through
:func:`vitp.cli.cli` with exactly the arguments recorded, so ``vitp <arguments>`` in a shell
reproduces it. Each finished command leaves ``OUT/cells/<cell>/step<N>.json`` (its arguments and
metrics); a later run of the same study skips every step whose file exists with the same arguments,
so an interrupted study resumes where it stopped and a finished cell is not recomputed. Every
command is appended to ``OUT/commands.md`` as it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METRIC_KEYS = ("pq", "pq_th", "pq_st", "sq", "rq", "miou", "map", "map_small", "map_medium", "map_large",
               "point_acc", "point_acc_thing", "point_acc_stuff", "pq_proposer", "pq_oracle", "miou_oracle")
"""Metrics a study keeps from a ``vitp validate`` (logged as ``val/<key>``)."""


def command_line(argv: Sequence[str]) -> str:
    """``vitp ARGS`` as one shell-quoted line."""
    return shlex.join(["vitp", *argv])


@contextlib.contextmanager
def own_argv() -> Iterator[None]:
    """``sys.argv`` is just ``["vitp"]`` while ``vitp ARGV`` runs in this process through ``args``
    (LightningCLI warns when a process's own command line holds arguments besides ``args``)."""
    saved = sys.argv
    sys.argv = ["vitp"]
    try:
        yield
    finally:
        sys.argv = saved


def run_vitp(argv: Sequence[str]) -> dict[str, Any]:
    """Run ``vitp ARGS`` in this process; the metrics it logged (``val/pq`` -> ``pq``) and, after a
    ``fit``, the path of its last (else best) checkpoint as ``checkpoint``."""
    from vitp.cli import cli

    with own_argv():
        run = cli(list(argv))
    trainer = run.trainer
    out: dict[str, Any] = {}
    for key, value in trainer.callback_metrics.items():
        name = key.split("/", 1)[1] if "/" in key else key
        if name in METRIC_KEYS and key.startswith(("val/", "test/")):
            out[name] = float(value)
    if argv and argv[0] == "fit":
        callback = trainer.checkpoint_callback
        path = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
        if not path:
            raise RuntimeError(f"{command_line(argv)} left no checkpoint (enable a ModelCheckpoint callback)")
        out["checkpoint"] = str(Path(path).resolve())
    return out


def cell_callbacks(config: str | os.PathLike, cell_dir: Path) -> list[dict[str, Any]]:
    """The config's ``trainer.callbacks`` with every ``dirpath`` moved into ``cell_dir`` (same last
    folder name), plus a ``ModelCheckpoint(save_last=True)`` in ``cell_dir/checkpoints`` when the
    config has none: each cell writes its checkpoints (and saved proposers) in its own folder."""
    data = yaml.safe_load(Path(config).read_text()) or {}
    callbacks = [dict(c) for c in ((data.get("trainer") or {}).get("callbacks") or [])]
    out = []
    for cb in callbacks:
        args = dict(cb.get("init_args") or {})
        if args.get("dirpath"):
            args["dirpath"] = str(cell_dir / Path(str(args["dirpath"])).name)
        out.append({**cb, "init_args": args})
    if not any(str(cb.get("class_path", "")).endswith("ModelCheckpoint") for cb in out):
        out.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(cell_dir / "checkpoints"), "save_last": True}})
    return out


def fit_args(config: str, cell_dir: Path, seed: int, extra: Sequence[str]) -> list[str]:
    """``vitp fit`` of ``config`` writing only into ``cell_dir`` (logs, checkpoints), seeded; ``extra``
    (the user's overrides) come last."""
    return ["fit", "--config", str(config), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(cell_dir),
            "--trainer.callbacks", json.dumps(cell_callbacks(config, cell_dir)),
            "--trainer.enable_progress_bar", "false", *extra]


def validate_args(config: str, checkpoint: str, extra: Sequence[str], cell_dir: Path) -> list[str]:
    """``vitp validate`` of a checkpoint with points on the validation images (point accuracy)."""
    return ["validate", "--config", str(config), "--ckpt_path", str(checkpoint),
            "--trainer.default_root_dir", str(cell_dir), "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
            "--data.init_args.val_points", "true", *extra]


@dataclass
class Study:
    """One study's output directory: cells, their step files, the command log.

    out: the output directory (created).
    name: the study's name (``annotation-budget`` ...), for the command log.
    argv: the ``vitp study`` arguments this run was started with (recorded at the top of the log).
    """

    out: Path
    name: str
    argv: Sequence[str]
    skipped: list[str] = field(default_factory=list)  # cell steps found finished (resume)
    ran: list[str] = field(default_factory=list)  # cell steps run now

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "commands.md"
        with log.open("a") as f:
            if f.tell() == 0:
                f.write(f"# Commands of `vitp study {self.name}`\n\nEvery command this study ran, in order "
                        "(a resumed run appends; steps found finished are listed as skipped). Run from the "
                        "working directory the study was started in.\n")
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M:%S')}: `{command_line(['study', self.name, *self.argv])}`"
                    f" (cwd `{os.getcwd()}`)\n\n")

    def cell_dir(self, cell: str) -> Path:
        return self.out / "cells" / cell

    def log(self, line: str) -> None:
        with (self.out / "commands.md").open("a") as f:
            f.write(line + "\n")

    def step(self, cell: str, index: int, argv: Sequence[str],
             runner: Callable[[Sequence[str]], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Run step ``index`` of ``cell`` (``vitp ARGV``, by ``runner``, default :func:`run_vitp`) unless
        its step file holds the same arguments."""
        path = self.cell_dir(cell) / f"step{index}.json"
        if path.is_file():
            done = json.loads(path.read_text())
            if done.get("argv") == list(argv):
                self.skipped.append(f"{cell}/step{index}")
                self.log(f"- skipped (done earlier): `{command_line(argv)}`")
                return dict(done["result"])
        self.log(f"- `{command_line(argv)}`")
        start = time.perf_counter()
        result = (runner or run_vitp)(argv)
        result["seconds"] = round(time.perf_counter() - start, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"argv": list(argv), "result": result}, indent=1))
        self.ran.append(f"{cell}/step{index}")
        return result

    def done(self, cell: str, key: str) -> dict[str, Any] | None:
        """A cell result stored with :meth:`save` under ``key`` (resume for non-command cells)."""
        path = self.cell_dir(cell) / "result.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("key") == key:
                self.skipped.append(cell)
                return dict(data["result"])
        return None

    def save(self, cell: str, key: str, result: dict[str, Any]) -> None:
        path = self.cell_dir(cell) / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "result": result}, indent=1))
        self.ran.append(cell)
