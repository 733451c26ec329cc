"""What a sweep runs, resolved once before anything is created: :func:`make_plan` reads the sweep's
settings (``hydra.sweeper``), the job's config, the launcher's settings and the command line, checks
them, and returns one frozen :class:`SweepPlan` — the objectives and directions, sampler and pruner,
the search space, the pack size and worker count, the budget and the stores. The runner
(:mod:`lenet_sweep.sweep.runner`) only reads it. A bad input is a :class:`SweepError` (one line,
named key); nothing here starts a process or opens a store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from lenet_sweep import devices, stores
from lenet_sweep.config import BATCHES, UserError, flatten, objective_text, objectives as objective_list
from lenet_sweep.pack.rules import unpackable
from lenet_sweep.sweep import samplers, settings
from lenet_sweep.sweep.space import (PARAMS, SearchSpaceError, check_values, entry_name, override_key,
                                     parse_space, split_overrides)
from lenet_sweep.trial import monitor_for

#: the pruner named when hydra/sweeper/pruner is not among the runtime choices (conf/hydra/sweeper/optuna.yaml)
DEFAULT_PRUNER = "successive_halving"


class SweepError(UserError):
    """A bad sweep setting or input: one line, exit 1, nothing created."""


def sweep_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """``hydra.sweeper``'s keys over the schema's defaults, enums as names, the space flattened."""
    s = {**settings.defaults(), **{k: getattr(v, "value", v) for k, v in given.items()}}
    params = s["params"]
    params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else params
    s["params"] = flatten(params or {})
    return s


@dataclass(frozen=True)
class SweepPlan:
    """One sweep's decisions. Defaults: a plan of one unpacked trial at a time, no pruning (what a
    hand-built runner in a test needs)."""

    settings: Mapping[str, Any]  # hydra.sweeper's keys (sweep_settings)
    objectives: list[str] = field(default_factory=lambda: ["val_accuracy"])
    directions: list[str] = field(default_factory=lambda: ["maximize"])
    sampler_name: str = "tpe"
    sampler: Any = None  # the Optuna sampler (samplers.make_sampler), made for the space
    pruner_name: str = "none"
    pruner_config: Mapping[str, Any] = field(default_factory=lambda: OmegaConf.to_container(
        OmegaConf.structured(settings.NopPrunerConf)))
    extend_space: Callable | None = None  # hydra.sweeper.custom_search_space's function
    space: Mapping[str, Any] = field(default_factory=dict)  # key -> Optuna distribution
    fixed: list[str] = field(default_factory=list)  # the command line's plain overrides
    space_text: Mapping[str, str] = field(default_factory=dict)  # key -> its entry as written
    pack: int = 1  # trials per lenet_pool worker, trained as one graph (1: unpacked)
    n_jobs: int = 1  # trials running at once
    n_trials: int = 1
    storage_url: str = ""
    sweep_dir: Path = Path("multirun")
    notes: tuple[str, ...] = ()  # lines the sweep says once its inputs are known good


def make_plan(s: Mapping[str, Any], config: DictConfig, launcher, arguments: list[str]) -> SweepPlan:
    """The plan of a sweep with settings ``s`` (:func:`sweep_settings`), the job's ``config`` (with its
    ``hydra`` node), the instantiated Hydra ``launcher`` and the command line's ``arguments``."""
    objectives = objective_list(config.objective)
    choices = config.hydra.runtime.choices
    sampler_name = choices.get("hydra/sweeper/sampler", "tpe")
    pruner_name = choices.get("hydra/sweeper/pruner", DEFAULT_PRUNER)
    pruner_config = OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True)
    notes = []
    try:
        settings.check(dict(s))
        directions = settings.directions(s["direction"], objectives)
        if len(objectives) > 1 and sampler_name == "cmaes":
            raise ValueError(f"hydra/sweeper/sampler=cmaes optimises one objective, not objective="
                             f"{objective_text(objectives)}: choose hydra/sweeper/sampler=tpe (or random, "
                             "qmc, gp, grid)")
        s["pruner"]()  # bad pruner options fail here, before anything starts
        extend_space = settings.custom_search_space(s["custom_search_space"])
    except (ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        if isinstance(exc, TypeError) or pruner_name in reason:
            raise SweepError(f"hydra/sweeper/pruner={pruner_name}: {reason}") from None
        raise SweepError(reason) from None
    if not monitor_for(objectives)[1] and pruner_name != "none":  # Trial.report would raise
        shown = objective_text(objectives)
        why = (f"objective={shown} has no value per epoch" if len(objectives) == 1 else
               f"Optuna prunes no trial of a study with several objectives (objective={shown})")
        notes.append(f"hydra/sweeper/pruner={pruner_name}: off, {why}; every trial trains all its epochs")
        pruner_name = "none"
        pruner_config = OmegaConf.to_container(OmegaConf.structured(settings.NopPrunerConf))
    pack, pack_note = _pack(s, config, launcher)
    workers = devices.default_n_jobs(devices.visible_gpus(), os.cpu_count() or 1)
    n_jobs = s["n_jobs"] or workers * pack
    n_workers = getattr(launcher, "n_workers", None)
    if n_workers is not None and n_workers * pack < n_jobs:
        slots = f" (x hydra.launcher.pack={pack} trials each)" if pack > 1 else ""
        raise SweepError(f"hydra.launcher.n_workers={n_workers}{slots} is fewer than the "
                         f"{n_jobs} trials hydra.sweeper.n_jobs runs at once; leave "
                         f"hydra.launcher.n_workers null (it follows n_jobs) or set both to the same number")
    try:
        space, fixed, space_text = search_space(s["params"], config, arguments)
        sampler = samplers.make_sampler(sampler_name, s["sampler"], s["seed"], space)  # grid: choices only
        n_trials = s["n_trials"]
        if sampler_name == "grid" and samplers.grid_size(space) < n_trials:
            n_trials = samplers.grid_size(space)
            notes.append(f"hydra.sweeper.n_trials={s['n_trials']} is more than the grid's {n_trials} points: "
                         f"the study ends at {n_trials} trials")
    except (SearchSpaceError, ValueError, TypeError) as exc:
        raise SweepError(str(exc)) from None
    if pack > 1 and hasattr(launcher, "start"):  # lenet_pool: packed unless the trials cannot share a pack
        why = unpackable(config, space) or (
            f"hydra.sweeper.custom_search_space={s['custom_search_space']} may suggest any key"
            if extend_space else None)
        if why:
            pack_note = (f"{pack_note or f'hydra.launcher.pack={pack}'}: trials not packed ({why}); "
                         "one trial per worker")
            if not s["n_jobs"]:  # the default n_jobs: one worker per pack there would have been
                n_jobs = -(-n_jobs // pack)
            pack = 1
    if pack_note:
        notes.append(pack_note)
    return SweepPlan(settings=s, objectives=objectives, directions=directions, sampler_name=sampler_name,
                     sampler=sampler,
                     pruner_name=pruner_name, pruner_config=pruner_config, extend_space=extend_space,
                     space=space, fixed=fixed, space_text=space_text, pack=pack, n_jobs=n_jobs,
                     n_trials=n_trials, storage_url=s["storage"] or stores.default_optuna_storage(),
                     sweep_dir=Path(str(config.hydra.sweep.dir)), notes=tuple(notes))


def _pack(s: Mapping[str, Any], config: DictConfig, launcher) -> tuple[int, str | None]:
    """Trials per worker as the launcher's settings ask (``hydra.launcher.pack``; null: from the
    devices) and the line saying what null chose."""
    pack, note = getattr(launcher, "pack", 1), None
    asynchronous = getattr(launcher, "asynchronous", False)
    if pack is None:  # hydra.launcher.pack=null (the default): from the devices
        gpus = devices.visible_gpus()
        pack = devices.default_pack(gpus, devices.gpu_memory_mib() if gpus else [], config.data.batch_size)
        chosen = f"chosen for {'GPU' if gpus else 'CPU'}"
        if not asynchronous:
            pack, chosen = 1, "hydra.launcher.asynchronous=false: batches of unpacked trials"
        elif s["n_jobs"] and s["n_jobs"] < pack:  # n_jobs trials at once, no more
            pack, chosen = s["n_jobs"], f"{chosen}, at most hydra.sweeper.n_jobs"
        note = f"hydra.launcher.pack={pack} ({chosen})"
    if pack < 1 or (pack > 1 and not asynchronous):
        raise SweepError(f"hydra.launcher.pack={pack} is invalid: trials per worker must be >= 1 "
                         "(1: unpacked), and packing needs hydra.launcher.asynchronous=true")
    batches = getattr(launcher, "batches", BATCHES[0])
    if batches not in BATCHES:
        raise SweepError(f"hydra.launcher.batches={batches} is invalid: independent (each packed trial its "
                         "own batch orders) or shared (one batch stream per pack)")
    return pack, note


def search_space(params: Mapping[str, str], config: DictConfig, arguments: list[str]):
    """The search space: config entries (``params``), less keys fixed on the command line, plus
    command-line sweeps (which win over a fixed value of the same key); and the fixed overrides and
    each entry as written."""
    cli_space, fixed = split_overrides(arguments)
    cli_keys = {k.lstrip("+") for k in cli_space}
    fixed = [f for f in fixed if override_key(f) not in cli_keys]
    fixed_keys = {override_key(f) for f in fixed}
    space = parse_space({k: v for k, v in params.items() if k not in fixed_keys})
    space.update(parse_space(cli_space, prefix=""))
    if not space:
        raise SearchSpaceError("the search space is empty (hydra.sweeper.params and the command line): "
                               "give at least one entry, e.g. 'optimizer.lr=tag(log, interval(0.01, 1))'")
    text = {**params, **cli_space}
    check_values(space, config,  # every value as the key's own would be, before anything exists
                 {k: entry_name(k, text[k], "" if k in cli_space else PARAMS) for k in space})
    return space, fixed, text

