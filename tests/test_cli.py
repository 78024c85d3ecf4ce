"""Every YAML in configs/ parses (`--print_config`), every class it names has complete typed `--help`,
and the oracle `vitp test` reaches PQ = mIoU = AP = 100 through the real COCO loader.

Parsing and help run the real `vitp` CLI in-process (`vitp_in_process`: same parser, same
arguments, no interpreter start-up); `run_vitp` runs `python -m vitp.cli` as a subprocess and is
kept for the few true end-to-end runs (here: the oracle on the official layout).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from conftest import PROJECT_ROOT

LOGGER_FRAGMENTS = sorted((PROJECT_ROOT / "configs" / "loggers").glob("*.yaml"))  # added after a main config
CLUSTER_FRAGMENTS = sorted((PROJECT_ROOT / "configs" / "cluster").glob("*.yaml"))  # likewise
CHECKPOINT_FRAGMENTS = sorted((PROJECT_ROOT / "configs" / "checkpoint").glob("*.yaml"))  # likewise (test_resume.py)
FRAGMENTS = LOGGER_FRAGMENTS + CLUSTER_FRAGMENTS + CHECKPOINT_FRAGMENTS
CONFIGS = sorted(p for p in (PROJECT_ROOT / "configs").rglob("*.yaml") if p not in FRAGMENTS)


def run_vitp(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m vitp.cli ARGS`` in a subprocess (asserts success)."""
    cmd = [sys.executable, "-m", "vitp.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd or PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def vitp_in_process(*args: str) -> str:
    """``vitp ARGS`` in this process (``--help`` / ``--print_config`` exit with status 0); its stdout."""
    from vitp.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), mock.patch.object(sys, "argv", ["vitp"]):
        try:
            main(list(args))
        except SystemExit as e:
            assert e.code in (0, None), f"vitp {' '.join(args)} exited with {e.code}:\n{out.getvalue()[-3000:]}"
    return out.getvalue()


def _class_paths(key: str) -> list[str]:
    """The class paths that configs name under ``key`` (``model``, ``data``, ``proposer``)."""
    found = set()
    for config in CONFIGS:
        cfg = yaml.safe_load(config.read_text())
        node = cfg["model"]["init_args"]["proposer"] if key == "proposer" else cfg[key]
        found.add(node["class_path"])
    return sorted(found)


def test_configs_exist():
    assert CONFIGS, "no YAML configs found"


def test_help_lists_subcommands():
    out = vitp_in_process("--help")
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(PROJECT_ROOT / "configs")))
def test_config_prints(config: Path, tiny_coco_root: Path):
    printed = vitp_in_process("test", "--config", str(config), "--data.init_args.root", str(tiny_coco_root),
                              "--print_config")
    parsed = yaml.safe_load(printed)
    assert parsed["model"]["class_path"] and parsed["data"]["class_path"]
    assert str(tiny_coco_root) in printed


@pytest.mark.parametrize("fragment", LOGGER_FRAGMENTS, ids=lambda p: p.name)
def test_logger_fragment_adds_to_a_main_config(fragment: Path, tiny_coco_root: Path):
    main = PROJECT_ROOT / "configs/synthetic/vitp/tiny_oracle_masks.yaml"
    printed = vitp_in_process("fit", "--config", str(main), "--config", str(fragment),
                              "--data.init_args.root", str(tiny_coco_root), "--print_config")
    loggers = [entry["class_path"] for entry in yaml.safe_load(printed)["trainer"]["logger"]]
    assert "lightning.pytorch.loggers.CSVLogger" in loggers and len(loggers) >= 2


def test_slurm_fragment_gives_lightning_requeue_environment(tiny_coco_root: Path, monkeypatch):
    """configs/cluster/slurm.yaml with a main config, under (simulated) srun variables: the trainer
    uses Lightning's SLURMEnvironment with auto-requeue on SIGUSR1 and takes the ranks from SLURM."""
    import signal

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from vitp.cli import cli

    assert CLUSTER_FRAGMENTS == [PROJECT_ROOT / "configs" / "cluster" / "slurm.yaml"]
    for key, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "vitp",
                       "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0", "PL_GLOBAL_SEED": "0"}.items():
        monkeypatch.setenv(key, value)
    main = PROJECT_ROOT / "configs/synthetic/vitp/tiny_oracle_masks.yaml"
    args = ["--config", str(main), "--config", str(CLUSTER_FRAGMENTS[0]), "--data.init_args.root", str(tiny_coco_root),
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.logger", "false"]
    printed = yaml.safe_load(vitp_in_process("fit", *args, "--print_config"))
    assert printed["trainer"]["plugins"][0]["init_args"] == {"auto_requeue": True, "requeue_signal": "SIGUSR1"}
    env = cli(args, run=False).trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1
    assert env.world_size() == 2 and env.main_port == 19242


@pytest.mark.parametrize("class_path", _class_paths("model"))
def test_model_help(class_path: str):
    model_help = vitp_in_process("fit", "--model.help", class_path)
    assert "--model.proposer" in model_help and "--model.output.export_dir" in model_help
    assert "--model.point_supervision" in model_help and "--model.inference.fusion_alpha" in model_help


@pytest.mark.parametrize("class_path", _class_paths("data"))
def test_data_help(class_path: str):
    data_help = vitp_in_process("fit", "--data.help", class_path)
    # the subclass's own arguments and the base data module's, each typed and documented
    for arg in ("--data.root ROOT", "--data.batch_size BATCH_SIZE", "--data.point_sampler"):
        assert arg in data_help
    assert "dataset root with" in data_help and "training batch size" in data_help


@pytest.mark.parametrize("class_path", _class_paths("proposer"))
def test_proposer_help_is_complete_and_typed(class_path: str):
    """Arguments a proposer forwards with ``**kwargs`` are still listed, typed and documented."""
    out = vitp_in_process("fit", "--model.init_args.proposer.help", class_path)
    for arg in ("num_classes", "class_names", "is_thing"):  # linked from the data module
        assert f"--proposer.{arg} " in out
    if class_path in ("vitp.proposers.Mask2FormerProposer", "vitp.proposers.OneFormerProposer"):
        assert "--proposer.freeze {none,backbone,all}" in out and "--proposer.unmapped {drop,void}" in out
        flat = " ".join(out.split())  # argparse wraps long type names
        assert "Optional[Literal['tiny', 'small', 'swin-tiny', 'native-tiny', 'native-small']]" in flat
        assert "hub id" in out  # HFUniversalProposer's documentation of `model`
    if class_path == "vitp.proposers.OneFormerProposer":
        assert "--proposer.train_task {random,given}" in out and "a tokenizer directory" in out
    if class_path == "vitp.proposers.NativeProposer":  # its two blocks, every field typed and documented
        assert "--proposer.architecture.query_init {conv,learned}" in out and "channels per stage" in out
        assert "--proposer.loss.train_num_points TRAIN_NUM_POINTS" in out and "weight of the dice loss" in out


def oracle_metrics(root: Path, tmp_path: Path, in_process: bool) -> dict[str, float]:
    """`vitp test` of the oracle config on ``root``; the exported metrics.json."""
    export = tmp_path / "export"
    args = ("test", "--config", str(PROJECT_ROOT / "configs/coco/panoptic/oracle.yaml"),
            "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
            "--model.init_args.output.export_dir", str(export))
    if in_process:
        vitp_in_process(*args)
    else:
        run_vitp(*args, cwd=tmp_path)
    return json.loads((export / "metrics.json").read_text())


def test_oracle_test_on_official_layout_is_perfect(tiny_coco_root: Path, tmp_path: Path):
    metrics = oracle_metrics(tiny_coco_root, tmp_path, in_process=False)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), (key, metrics)


def test_oracle_test_on_real_coco_sample(coco_sample_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = oracle_metrics(coco_sample_root, tmp_path, in_process=True)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "map"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), (key, metrics)


def test_default_loggers_share_one_version_dir_without_warning(tmp_path: Path):
    """TensorBoard + CSV in one ``lightning_logs/version_N``, and no "directory not empty" warning."""
    import warnings

    from vitp.cli import default_loggers

    loggers = default_loggers(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for logger in loggers:  # the order the Trainer uses
            logger.log_hyperparams({"lr": 0.1})
            logger.log_metrics({"val/pq": 1.0}, step=0)
            logger.save()
    version_dir = tmp_path / "lightning_logs" / "version_0"
    assert (version_dir / "metrics.csv").is_file()
    if len(loggers) > 1:
        assert list(version_dir.glob("events.out.tfevents.*"))


def refused_config_message(tmp_path: Path, config: dict) -> str:
    """The error of ``vitp fit --config`` on ``config`` written to a file: it must stop before
    parsing and name the file."""
    from vitp.cli import cli

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as raised:
        cli(["fit", "--config", str(path)], run=False)
    assert str(path) in str(raised.value)
    return str(raised.value)


def test_a_config_with_renamed_options_names_the_file_and_the_new_places(tmp_path: Path):
    """A config written before the module's options were grouped stops before parsing with the file,
    each renamed option and where it lives now (not jsonargparse's bare "key not accepted")."""
    old = yaml.safe_load((PROJECT_ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml").read_text())
    init = old["model"]["init_args"]
    init["fusion_alpha"] = init.pop("inference")["fusion_alpha"]
    init["no_object_points"] = True
    init.pop("point_supervision")
    cinit = init["classifier"]["init_args"]
    cinit["point_glimpse"] = cinit.pop("glimpse")["window"]
    message = refused_config_message(tmp_path, old)
    for line in ("model.init_args.fusion_alpha -> model.init_args.inference.fusion_alpha",
                 "model.init_args.no_object_points -> model.init_args.point_supervision",
                 "classifier.init_args.point_glimpse -> classifier.init_args.glimpse.window"):
        assert line in message
    from vitp.settings import renamed_options

    current = yaml.safe_load((PROJECT_ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml").read_text())
    assert renamed_options(current["model"]) == []


def test_one_optimizer_path_lightning_optimizer_arguments_are_not_offered(tmp_path: Path):
    """The optimiser is the model's ``optimization`` block: ``fit --help`` offers no LightningCLI
    ``--optimizer`` / ``--lr_scheduler`` (they would replace vitp's parameter groups), and a config that
    still has them stops with the file and the place to use instead."""
    fit_help = vitp_in_process("fit", "--config", str(PROJECT_ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml"),
                               "--help")
    assert "--optimizer" not in fit_help and "--lr_scheduler" not in fit_help
    assert "known subclasses: vitp.data.SegmentationDataModule" in " ".join(fit_help.split())
    config = yaml.safe_load((PROJECT_ROOT / "configs/synthetic/vitp/tiny_mask2former.yaml").read_text())
    config["optimizer"] = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1}}
    assert "optimizer -> model.init_args.optimization" in refused_config_message(tmp_path, config)


def test_native_proposer_renamed_options_are_reported_for_its_class_path_only(tmp_path: Path):
    """The native proposer's options from before ``NativeArchitecture`` / ``NativeLossSettings`` stop a
    config with their new places; Mask2Former's own options of the same names are left alone."""
    from vitp.settings import renamed_options

    config = PROJECT_ROOT / "configs/synthetic/proposer/native_equal_budget.yaml"
    old = yaml.safe_load(config.read_text())
    pinit = old["model"]["init_args"]["proposer"]["init_args"]
    pinit.update(pinit.pop("architecture"), class_weight=3.0)
    message = refused_config_message(tmp_path, old)
    assert "proposer.init_args.dims -> proposer.init_args.architecture.dims" in message
    assert "proposer.init_args.class_weight -> proposer.init_args.loss.class_weight" in message
    m2f = {"init_args": {"proposer": {"class_path": "vitp.proposers.Mask2FormerProposer",
                                      "init_args": {"class_weight": 2.0, "train_num_points": 256}}}}
    assert renamed_options(m2f) == []
    for current in ("proposer/native_small", "proposer/native_equal_budget", "vitp/tiny_native"):
        model = yaml.safe_load((PROJECT_ROOT / f"configs/synthetic/{current}.yaml").read_text())["model"]
        assert renamed_options(model) == [], current
