"""`gptoss-batch shard|merge`: the two steps of an InferenceBatch, run by its Jobs.

``shard`` answers one shard's lines (the index comes from JOB_COMPLETION_INDEX, which the
Indexed Job sets, or ``--index``); ``merge`` writes output.jsonl and errors.jsonl from
every shard's parts. Both read GPTOSS_BATCH_PLAN (JSON, see ``batch.plan``); ``shard``
also reads GPTOSS_ENGINE_API_KEY and GPTOSS_POD_NAME, and reports progress into the
batch's status when it has an identity in the cluster (GPTOSS_REPORT=0 turns that off).

Exit codes tell the Job what to do: 0 done, 2 the batch cannot run (input unreadable,
output not writable, the output folder another batch's: retrying cannot help, the batch
fails), 3 storage failed for a while (retried), 143 stopped by a signal. The termination
message (JSON) says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from gptoss_operator.api.batch import ShardProgress
from gptoss_operator.api.batch_plan import (
    EXIT_CANNOT_RUN,
    EXIT_SIGNAL,
    EXIT_STORAGE,
    PLAN_ENV,
    BatchPlan,
)
from gptoss_operator.api.conditions import timestamp
from gptoss_operator.engine.client import QUIET_SECONDS, EngineClient
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.workers.batch.merge import LinesMissing, merge
from gptoss_operator.workers.batch.ownership import OutputInUse, Owner, claim_output
from gptoss_operator.workers.batch.plan import input_file, output_folder
from gptoss_operator.workers.batch.shard import ShardRunner
from gptoss_operator.workers.batch.storage import OutputFolder, StorageError

log = logging.getLogger("gptoss.batch")
TERMINATION_LOG = "/dev/termination-log"


def write_termination(path: str, payload: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(payload)[:4000])


def plan_from_env(env: dict[str, str]) -> BatchPlan:
    raw = env.get(PLAN_ENV)
    if not raw:
        raise SystemExit(f"gptoss-batch: set {PLAN_ENV}")
    return BatchPlan.model_validate_json(raw)


def status_reporter(plan: BatchPlan, index: int) -> Any:
    """Merge-patches this shard's entry of the batch's status.shards."""
    from lightkube.types import PatchType

    from gptoss_operator.api.resources import InferenceBatchResource
    from gptoss_operator.core.kube import new_client

    client = new_client("gptoss-batch")

    async def report(progress: ShardProgress) -> None:
        entry = progress.to_wire() | {"updateTime": timestamp()}
        await client.patch(
            InferenceBatchResource.Status,
            plan.batch,
            {"status": {"shards": {str(index): entry}}},
            namespace=plan.namespace,
            patch_type=PatchType.MERGE,
        )

    return report


def claim(plan: BatchPlan, folder: OutputFolder) -> None:
    owner = Owner(plan.namespace, plan.batch, plan.uid)
    claim_output(folder, owner, overwrite=plan.overwrite)


def output_in_use(termination: str, error: OutputInUse) -> int:
    log.error("%s", error.message)
    write_termination(termination, {"reason": "OutputInUse", "message": error.message})
    return EXIT_CANNOT_RUN


def storage_failure(termination: str, error: StorageError) -> int:
    reason = "StorageUnusable" if error.permanent else "StorageUnavailable"
    log.error("%s", error.message)
    write_termination(termination, {"reason": reason, "message": error.message})
    return EXIT_CANNOT_RUN if error.permanent else EXIT_STORAGE


async def _run_shard(plan: BatchPlan, index: int, env: dict[str, str]) -> int:
    termination = env.get("GPTOSS_TERMINATION_LOG", TERMINATION_LOG)
    output = output_folder(plan.output)
    try:
        await asyncio.to_thread(output.check_writable)
        await asyncio.to_thread(claim, plan, output)
    except StorageError as error:
        return storage_failure(termination, error)
    except OutputInUse as error:
        return output_in_use(termination, error)
    engine = EngineClient(
        plan.engineUrl,
        plan.servedModelName,
        max_connections=plan.requestsPerShard + 4,
        quiet_seconds=float(env.get("GPTOSS_ENGINE_QUIET_SECONDS", QUIET_SECONDS)),
        through_service=True,
        api_key=env.get("GPTOSS_ENGINE_API_KEY") or None,
    )
    report = status_reporter(plan, index) if env.get("GPTOSS_REPORT", "1") != "0" else None
    runner = ShardRunner(
        plan,
        index,
        env.get("GPTOSS_POD_NAME") or socket.gethostname(),
        input_file(plan.input),
        output,
        engine,
        Harmony(),
        report=report,
    )
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        tally = await task
    except asyncio.CancelledError:
        log.info("stopped: %d lines of shard %d written", runner.tally.done, index)
        write_termination(termination, {"reason": "Stopped", "message": "stopped by a signal"})
        return EXIT_SIGNAL
    except StorageError as error:
        return storage_failure(termination, error)
    finally:
        await engine.close()
    message = f"shard {index}: {tally.succeeded} answered, {tally.failed} failed"
    log.info("%s", message)
    write_termination(termination, {"reason": "ShardDone", "message": message})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptoss-batch", description=__doc__)
    steps = parser.add_subparsers(dest="step", required=True)
    shard = steps.add_parser("shard", help="answer one shard's lines")
    shard.add_argument("--index", type=int, help="default: $JOB_COMPLETION_INDEX")
    steps.add_parser("merge", help="write output.jsonl and errors.jsonl from the parts")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for client in ("httpx", "httpx2"):  # a line per request otherwise
        logging.getLogger(client).setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    env = dict(os.environ)
    plan = plan_from_env(env)
    termination = env.get("GPTOSS_TERMINATION_LOG", TERMINATION_LOG)
    if args.step == "merge":
        folder = output_folder(plan.output)
        try:
            claim(plan, folder)
            summary = merge(folder)
        except StorageError as error:
            return storage_failure(termination, error)
        except OutputInUse as error:
            return output_in_use(termination, error)
        except LinesMissing as error:
            log.error("%s", error.message)
            write_termination(termination, {"reason": "LinesMissing", "message": error.message})
            return EXIT_CANNOT_RUN
        write_termination(termination, {"reason": "Merged", "summary": summary.__dict__})
        return 0
    index = args.index if args.index is not None else int(env.get("JOB_COMPLETION_INDEX", "0"))
    if not 0 <= index < plan.shards:
        raise SystemExit(f"gptoss-batch: shard index {index} is not in 0..{plan.shards - 1}")
    return asyncio.run(_run_shard(plan, index, env))


if __name__ == "__main__":
    sys.exit(main())
