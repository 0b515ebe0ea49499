"""The packed launcher (`hydra/launcher=packed`, `packed_slurm`): compose a sweep's jobs, cut them
into packs of runs that can train together (`plan_packs`, by the family's `pack_key`), and train
each pack with the job runner of every launcher (`command.train_jobs`), here one after another or
as one SLURM job per pack (submitit). Why a launcher: it is the one place that receives every job
of a sweep at once, so sweep files stay as they are and each job gets the run folder and .hydra/
files a one-run-per-job launcher writes. The family is the one the command's config names
(`command.FAMILY_KEY`); one that cannot pack was refused before launch (`command.refuse_packs`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import submitit
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

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


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    family = load_family(OmegaConf.select(launcher.config, FAMILY_KEY))
    configs, jobs = [], []  # each job's composed config (its hydra node too), and what it trains
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        config = compose_job(launcher.config, list(overrides))
        with open_dict(config), read_write(config.hydra.runtime):  # as Hydra's run_job sets them
            config.hydra.job.id = config.hydra.job.num = number
            run_dir = job_dir(config)
            config.hydra.runtime.output_dir = os.path.abspath(run_dir)
        files = hydra_files(_task_config(config), OmegaConf.masked_copy(config, "hydra"))
        configs.append(config)
        jobs.append(Job(from_hydra(family.schema, config), run_dir, files))
    cfgs, size = [job.cfg for job in jobs], launcher.max_pack_size
    packs = plan_packs(range(len(jobs)), cfgs, family.pack_key, size)  # of job indices
    where = "as SLURM jobs" if launcher.slurm else "here, one after another"
    log.info("packed launcher: %d runs in %d packs (%s)", len(jobs), len(packs), where)
    for pack in packs:
        named = [" ".join(filter_overrides(job_overrides[i])) or jobs[i].run_dir.name for i in pack]
        log.info("  pack of %d: %s", len(pack), " | ".join(named))
    train, job_packs = PackJob(family.name), [[jobs[i] for i in pack] for pack in packs]
    if launcher.slurm:
        results = _run_on_slurm(launcher, train, job_packs)
    else:
        results = [train(pack) for pack in job_packs]
    summaries = {}  # by job index
    for pack, result in zip(packs, results, strict=True):
        summaries |= dict(zip(pack, result, strict=True))
    return [
        _job_return(list(job_overrides[i]), configs[i], jobs[i], summaries[i])
        for i in range(len(jobs))
    ]


def _task_config(job_config: DictConfig) -> DictConfig:
    """The job's config without Hydra's node: what the job trains, as .hydra/config.yaml."""
    return OmegaConf.masked_copy(job_config, [key for key in job_config if key != "hydra"])


def _run_on_slurm(launcher, train: PackJob, packs: list[list[Job]]) -> list[list[dict]]:
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
    return [job.result() for job in jobs]


# submitit's own names; every other key of `slurm` is a SLURM option (submitit's slurm_ prefix)
_GENERIC_PARAMETERS = """cpus_per_task gpus_per_node name timeout_min nodes mem_gb stderr_to_stdout
tasks_per_node""".split()


class PackJob(submitit.helpers.Checkpointable):
    """Train one pack of the family named `family` (its summaries), exiting as every job does
    (`job_exits`). As a SLURM job, on preemption or time-out the trainer saves every member's
    last.pt, and submitit requeues this same call, which resumes them."""

    def __init__(self, family: str):
        self.family = family  # a name: the job pickles it, the SLURM node loads the family

    def __call__(self, pack: list[Job]) -> list[dict]:
        with job_exits():
            return train_jobs(load_family(self.family), pack)


def _job_return(overrides: list[str], config: DictConfig, job: Job, summary: dict) -> JobReturn:
    ok = summary["status"] == COMPLETED
    failure = RunFailed(f"{job.run_dir}: {summary.get('failure', 'did not complete')}")
    return JobReturn(
        overrides=overrides,
        cfg=_task_config(config),
        hydra_cfg=config,
        working_dir=os.getcwd(),
        task_name=config.hydra.job.name,
        status=JobStatus.COMPLETED if ok else JobStatus.FAILED,
        _return_value=summary if ok else failure,
    )
