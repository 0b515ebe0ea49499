"""What `hydra/launcher=packed` does with a sweep: compose and check every job, cut the jobs into
packs (packing.plan_packs), and train each pack as one stacked model — in this process, one pack
after another, or as one SLURM job per pack (`hydra/launcher=packed_slurm`, through submitit).

Why a launcher: a launcher is the one place that receives every job of a sweep at once, so users
keep their sweep files and switch packing on with `hydra/launcher=packed`, exactly as they switch
to local processes or SLURM. Each job still gets its own run folder (`hydra.sweep.subdir`) with its
own `.hydra/` files, and the folders are the same as a one-run-per-job launcher writes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from grokking.algorithmic import train_pack
from grokking.algorithmic.config import TrainConfig, validate
from grokking.algorithmic.packing import plan_packs
from grokking.runs.config import ConfigError, from_hydra
from grokking.runs.loop import Interrupted, RunFailed
from grokking.runs.rundir import COMPLETED, DamagedFile, DiskFull, RunLocked
from grokking.runs.sweep import compose_job, job_dir, refuse

log = logging.getLogger("grokking")


@dataclass
class Member:
    """One job of the sweep: its number, overrides, config and run folder."""

    number: int
    overrides: list[str]
    cfg: TrainConfig
    run_dir: Path
    job_yaml: str  # the job's config as Hydra would save it in .hydra/config.yaml


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    members, hydra_configs = [], []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        job_config = compose_job(launcher.config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = job_config.hydra.job.num = number
        hydra_configs.append(job_config)
        try:
            cfg = from_hydra(TrainConfig, job_config)
            validate(cfg)
        except ConfigError as error:
            refuse(f"sweep job {number} ({' '.join(overrides)}): {error}; nothing trained")
        run_dir = job_dir(job_config)
        plain = OmegaConf.masked_copy(job_config, [k for k in job_config if k != "hydra"])
        members.append(Member(number, list(overrides), cfg, run_dir, OmegaConf.to_yaml(plain)))
    packs = plan_packs(members, [m.cfg for m in members], launcher.max_pack_size)
    where = "as SLURM jobs" if launcher.slurm else "here, one after another"
    log.info("packed launcher: %d runs in %d packs (%s)", len(members), len(packs), where)
    for pack in packs:
        log.info("  pack of %d: %s", len(pack), " | ".join(_describe(m) for m in pack))
    summaries = _run_on_slurm(launcher, packs) if launcher.slurm else _run_here(packs)
    return [
        _job_return(member, job_config, summaries.get(member.number))
        for member, job_config in zip(members, hydra_configs, strict=True)
    ]


def _describe(member: Member) -> str:
    return " ".join(filter_overrides(member.overrides)) or member.run_dir.name


def _run_here(packs: list[list[Member]]) -> dict[int, dict]:
    summaries = {}
    try:
        for pack in packs:
            summaries |= train_members(pack)
    except Interrupted as error:
        log.warning("%s; rerun the same command to resume", error)
        sys.exit(128 + error.signum)
    except (RunLocked, DamagedFile, DiskFull) as error:  # each says what to do
        refuse(str(error), code=1)
    return summaries


def _run_on_slurm(launcher, packs: list[list[Member]]) -> dict[int, dict]:
    """One SLURM job per pack; waits for them all, as the submitit launcher does."""
    options = OmegaConf.to_container(launcher.slurm, resolve=True)
    executor = submitit.AutoExecutor(
        folder=launcher.submitit_folder,
        cluster="slurm",
        slurm_max_num_timeout=options.pop("max_num_timeout", 3),  # requeues after a time-out
    )
    executor.update_parameters(
        **{
            (key if key in _GENERIC_PARAMETERS else f"slurm_{key}"): value
            for key, value in options.items()
            if value is not None
        }
    )
    jobs = executor.map_array(PackJob(), packs)
    log.info("submitted %d SLURM jobs: %s", len(jobs), " ".join(job.job_id for job in jobs))
    summaries = {}
    for job in jobs:
        summaries |= job.result()
    return summaries


# submitit's own names; every other key of `slurm` is a SLURM option (submitit's slurm_ prefix)
_GENERIC_PARAMETERS = {
    "cpus_per_task",
    "gpus_per_node",
    "name",
    "timeout_min",
    "nodes",
    "mem_gb",
    "stderr_to_stdout",
    "tasks_per_node",
}


class PackJob(submitit.helpers.Checkpointable):
    """A pack as a SLURM job. On preemption or time-out the trainer saves every member's last.pt,
    and submitit requeues this same call, which resumes them."""

    def __call__(self, pack: list[Member]) -> dict[int, dict]:
        return train_members(pack)


def train_members(pack: list[Member]) -> dict[int, dict]:
    """Train one pack; {job number: summary}. Each job's .hydra/ files are written as Hydra
    does, once the trainer holds the run folder and has checked its config."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    for member in pack:
        if cpus and member.cfg.threads == 0:  # the CPUs SLURM gave this job
            member.cfg.threads = int(cpus)
    files = [
        {
            ".hydra/config.yaml": member.job_yaml,
            ".hydra/overrides.yaml": OmegaConf.to_yaml(member.overrides),
        }
        for member in pack
    ]
    summaries = train_pack([(member.cfg, member.run_dir) for member in pack], files)
    return {member.number: summary for member, summary in zip(pack, summaries, strict=True)}


def _job_return(member: Member, job_config: DictConfig, summary: dict | None) -> JobReturn:
    ok = summary is not None and summary["status"] == COMPLETED
    failure = RunFailed(f"{member.run_dir}: {(summary or {}).get('failure', 'did not complete')}")
    return JobReturn(
        overrides=member.overrides,
        cfg=OmegaConf.masked_copy(job_config, [k for k in job_config if k != "hydra"]),
        hydra_cfg=job_config,
        working_dir=os.getcwd(),
        task_name=job_config.hydra.job.name,
        status=JobStatus.COMPLETED if ok else JobStatus.FAILED,
        _return_value=summary if ok else failure,
    )
