"""A rerun with nothing left to do, recognised before Ray, torch or the tokenizer are imported.

`run_embedding_job` recognises it too (after its checks, before touching a cluster); this is the
CLI's cheaper first look, deciding with the very functions the full checks use (`identity`,
`resume.check_output`, `resume.nothing_to_do`): the last run over OUTPUT completed with every
input row in it, for the same job identity (model, dim, instruction, normalisation, precision,
chunking, kept columns) and the same ids, and neither the inputs nor OUTPUT's files changed
since. The model's facts are read from its config files as they are on this machine (a hub
id's from the hub's cache: nothing is downloaded). Anything else returns None, and the job is
planned and run as usual.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .config import JobConfig
from .discovery import discover
from .identity import ModelFacts, job_identity, job_input_fingerprint, rerun_id_column
from .manifest import JobResult, common_block, nothing_to_do_manifest, write_manifest
from .resume import check_output, nothing_to_do, read_manifest
from .storage import Location, resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Look:
    """What the first look found: `previous` (OUTPUT's manifest) when there is nothing to do,
    else None and `reason` says why not."""

    output: Location | None = None
    previous: dict[str, Any] | None = None
    reason: str = ""


def finish_if_nothing_to_do(config: JobConfig, phases: dict[str, float]) -> JobResult | None:
    """The no-op run's result (its manifest written) when there is nothing to do, else None
    (the reason is logged at DEBUG, or at INFO when the look itself failed)."""
    started = time.monotonic()
    try:
        look = _look(config)
    except (OSError, ValueError) as error:
        # This look only saves the imports and the tokenizer: the full path (`plan_job`, then
        # `run_embedding_job`) repeats every check with the same functions and makes the real
        # decision. So a look that fails (another job's OUTPUT, a damaged manifest, a model not
        # on this machine, a listing error) is not "done": the full path refuses with the same
        # error (exit code 2), or runs and resumes. Other exceptions are bugs and propagate.
        logger.info(
            "no quick 'nothing to do' for %s (%s: %s); the full checks decide",
            config.output,
            type(error).__name__,
            error,
        )
        return None
    if look.previous is None or look.output is None:
        logger.debug("no quick 'nothing to do' for %s: %s", config.output, look.reason)
        return None
    phases = {**phases, "plan": time.monotonic() - started}
    wall = sum(phases.values())
    manifest = nothing_to_do_manifest(
        look.previous,
        common_block(config.to_dict(), wall),
        wall,
        {name: round(seconds, 3) for name, seconds in phases.items()},
    )
    write_manifest(look.output, manifest)
    return JobResult.from_manifest(manifest)


def _look(config: JobConfig) -> _Look:
    """OUTPUT's manifest when the rerun has nothing to do; raises what the full checks raise
    (`check_output`: another job's OUTPUT, files not ours, a damaged manifest)."""
    storage = config.storage_options_dict
    output = resolve(config.output, storage)
    previous = read_manifest(output)
    if previous is None:
        return _Look(reason="OUTPUT has no manifest")
    if previous.get("status") != "complete":
        return _Look(reason=f"its last run is {previous.get('status')!r}, not complete")
    if config.calibration is not None:  # ranges read from a file: `job._choose_precision`
        return _Look(reason="--calibration ranges are compared with OUTPUT's by the full checks")
    facts = ModelFacts.read(config)
    previous = check_output(output, job_identity(config, facts))
    chosen = rerun_id_column(config, previous)
    if previous is None or chosen is None:  # OUTPUT went away meanwhile
        return _Look(reason="OUTPUT has no manifest")
    inputs = discover(config.input, config.format, storage)
    fingerprint = job_input_fingerprint(config, inputs, facts.family, chosen[0])
    if not nothing_to_do(previous, fingerprint, output):
        return _Look(
            reason="the inputs, their id settings or OUTPUT's files changed since its last run, "
            "or its counts do not add up"
        )
    return _Look(output, previous)
