"""What `hydra/launcher=packed` does with a sweep: compose every job, cut the jobs into packs of
runs that can train together (`plan_packs`, by the family's `pack_key`), and train each pack with
the job runner of every launcher (`command.train_jobs`) — in this process, one pack after
another, or as one SLURM job per pack (`hydra/launcher=packed_slurm`, through submitit).

Why a launcher: a launcher is the one place that receives every job of a sweep at once, so users
keep their sweep files and switch packing on with `hydra/launcher=packed`, exactly as they switch
to local processes or SLURM. Each job still gets its own run folder (`hydra.sweep.subdir`) with its
own `.hydra/` files, and the folders are the same as a one-run-per-job launcher writes. The family
is the one the command's config names (`command.FAMILY_KEY`); the pre-launch check has refused a
family that cannot pack (`command.check_launcher`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import submitit
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from grokking.runs.command import FAMILY_KEY, Job, hydra_files, job_exits, train_jobs
from grokking.runs.config import RunConfig, from_hydra
from grokking.runs.family import load_family
from grokking.runs.loop import RunFailed
from grokking.runs.rundir import COMPLETED
from grokking.runs.sweep import compose_job, job_dir

log = logging.getLogger("grokking")
T = TypeVar("T")


def plan_packs(
    items: Sequence[T], cfgs: Sequence[RunConfig], key: Callable[[RunConfig], tuple], max_size: int
) -> list[list[T]]:
    """`items` (one per config) cut into packs of at most `max_size` runs with equal `key`s (the
    family's `pack_key`), in the order the runs first appear; packs of one key are as even as
    the limit allows."""
    groups: dict[tuple, list[T]] = {}
    for item, cfg in zip(items, cfgs, strict=True):
        groups.setdefault(key(cfg), []).append(item)
    packs = []
    for group in groups.values():
        count = -(-len(group) // max_size)  # ceil
        size = -(-len(group) // count)
        packs += [group[start : start + size] for start in range(0, len(group), size)]
    return packs


@dataclass
class Member:
    """One job of the sweep: its number, its overrides and what it trains."""

    number: int
    overrides: list[str]
    job: Job


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    family = load_family(OmegaConf.select(launcher.config, FAMILY_KEY))
    members, job_configs = [], []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        job_config = compose_job(launcher.config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = job_config.hydra.job.num = number
        job_configs.append(job_config)
        files = hydra_files(_task_config(job_config), OmegaConf.masked_copy(job_config, "hydra"))
        job = Job(from_hydra(family.schema, job_config), job_dir(job_config), files)
        members.append(Member(number, list(overrides), job))
    cfgs = [member.job.cfg for member in members]
    packs = plan_packs(members, cfgs, family.pack_key, launcher.max_pack_size)
    where = "as SLURM jobs" if launcher.slurm else "here, one after another"
    log.info("packed launcher: %d runs in %d packs (%s)", len(members), len(packs), where)
    for pack in packs:
        log.info("  pack of %d: %s", len(pack), " | ".join(_describe(m) for m in pack))
    train = PackJob(family.name)
    summaries = _run_on_slurm(launcher, train, packs) if launcher.slurm else _run_here(train, packs)
    return [
        _job_return(member, job_config, summaries.get(member.number))
        for member, job_config in zip(members, job_configs, strict=True)
    ]


def _task_config(job_config: DictConfig) -> DictConfig:
    """The job's config without Hydra's node: what the job trains, as .hydra/config.yaml."""
    return OmegaConf.masked_copy(job_config, [key for key in job_config if key != "hydra"])


def _describe(member: Member) -> str:
    return " ".join(filter_overrides(member.overrides)) or member.job.run_dir.name


def _run_here(train: PackJob, packs: list[list[Member]]) -> dict[int, dict]:
    summaries = {}
    for pack in packs:
        summaries |= train(pack)
    return summaries


def _run_on_slurm(launcher, train: PackJob, packs: list[list[Member]]) -> dict[int, dict]:
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
    jobs = executor.map_array(train, packs)
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
    """Train one pack of the family named `family`: {job number: summary}, exiting as every job
    does (`job_exits`). As a SLURM job, on preemption or time-out the trainer saves every
    member's last.pt, and submitit requeues this same call, which resumes them."""

    def __init__(self, family: str):
        self.family = family  # a name: the job pickles it, the SLURM node loads the family

    def __call__(self, pack: list[Member]) -> dict[int, dict]:
        with job_exits():
            summaries = train_jobs(load_family(self.family), [member.job for member in pack])
        return {member.number: summary for member, summary in zip(pack, summaries, strict=True)}


def _job_return(member: Member, job_config: DictConfig, summary: dict | None) -> JobReturn:
    ok = summary is not None and summary["status"] == COMPLETED
    where = member.job.run_dir
    failure = RunFailed(f"{where}: {(summary or {}).get('failure', 'did not complete')}")
    return JobReturn(
        overrides=member.overrides,
        cfg=_task_config(job_config),
        hydra_cfg=job_config,
        working_dir=os.getcwd(),
        task_name=job_config.hydra.job.name,
        status=JobStatus.COMPLETED if ok else JobStatus.FAILED,
        _return_value=summary if ok else failure,
    )
