"""Opening the places a batch's plan names: a file or folder on a mounted volume, or in
a bucket."""

from __future__ import annotations

from pathlib import Path

from gptoss_operator.api.batch_plan import Place
from gptoss_operator.workers.batch.storage import (
    InputFile,
    OutputFolder,
    S3File,
    S3Folder,
    VolumeFile,
    VolumeFolder,
    s3_client,
)


def input_file(place: Place) -> InputFile:
    if place.s3 is not None:
        return S3File(place.s3, s3_client(place.s3, place.credentialsEnv))
    assert place.path is not None
    return VolumeFile(Path(place.path), place.url or place.path)


def output_folder(place: Place) -> OutputFolder:
    if place.s3 is not None:
        return S3Folder(place.s3, s3_client(place.s3, place.credentialsEnv))
    assert place.path is not None
    return VolumeFolder(Path(place.path), place.url or place.path)
