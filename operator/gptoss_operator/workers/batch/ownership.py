"""Whose an output folder is: the batch that first wrote there, named in ``owner.json``.

Every step of a batch (each shard, the merge) claims the folder before it reads or writes
anything in it. A folder owned by another batch, or holding batch files that no batch
claims, is refused with ``OutputInUse`` and left untouched, unless the batch's
``spec.output.overwrite`` says to replace those files. Claiming an empty folder is an
atomic create, so two batches started at once cannot both own it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from gptoss_operator.workers.batch.parts import ERRORS, OUTPUT, PARTS, SUMMARY
from gptoss_operator.workers.batch.storage import OutputFolder

OWNER = "owner.json"
_RESULTS = (SUMMARY, OUTPUT, ERRORS)


class OutputInUse(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Owner:
    namespace: str
    batch: str
    uid: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def claim_output(folder: OutputFolder, owner: Owner, *, overwrite: bool) -> None:
    """Make ``folder`` ``owner``'s, or raise ``OutputInUse``."""
    for _ in range(3):
        current = _read_owner(folder)
        if current is not None and current.uid == owner.uid:
            return
        written = _batch_files(folder)
        if current is None and not written:
            if folder.create(OWNER, owner.encode()):
                return
            continue  # claimed meanwhile (another shard of this batch, or another batch)
        if not overwrite:
            raise OutputInUse(_refusal(folder, current, written))
        for name in written:
            folder.delete(name)
        folder.write(OWNER, owner.encode())
        return
    raise OutputInUse(f"output folder {_where(folder)} keeps changing hands; try again")


def _read_owner(folder: OutputFolder) -> Owner | None:
    if not folder.exists(OWNER):
        return None
    try:
        data = json.loads(folder.read(OWNER))
        return Owner(str(data["namespace"]), str(data["batch"]), str(data["uid"]))
    except (ValueError, KeyError, TypeError):
        return Owner("?", "?", "")  # unreadable: nobody we can name, and not us


def _batch_files(folder: OutputFolder) -> list[str]:
    """The files a batch writes that are in the folder now."""
    return [name for name in _RESULTS if folder.exists(name)] + folder.list(f"{PARTS}/")


def _where(folder: OutputFolder) -> str:
    return folder.url("").rstrip("/")


def _refusal(folder: OutputFolder, current: Owner | None, written: list[str]) -> str:
    how = (
        "its files are left as they are: write elsewhere, or set spec.output.overwrite "
        "to true to replace them"
    )
    if current is None:
        shown = ", ".join(written[:3]) + (", ..." if len(written) > 3 else "")
        return f"output folder {_where(folder)} holds files no batch claims ({shown}); {how}"
    return (
        f"output folder {_where(folder)} belongs to InferenceBatch "
        f"{current.namespace}/{current.batch} (uid {current.uid}); {how}"
    )
