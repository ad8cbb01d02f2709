"""Locating stored instances within a scope and reading single frames by byte range."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from telerad.storage import (
    Archive,
    FrameNotFound,
    IngestSource,
    NotFound,
    Scope,
    find_instance,
    find_instances,
    read_frame,
    read_frames,
)
from tests.factories import ct_datasets, new_uid, part10

SITE_SOURCE = IngestSource(site_id=None, issuer="TEST", label="test")


def test_find_instances_in_reading_order_and_scope(archive: Archive) -> None:
    datasets = ct_datasets(4)
    for ds in reversed(datasets):
        archive.ingest_instance(part10(ds), SITE_SOURCE)
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    with archive.sessions() as session:
        found = find_instances(session, Scope(None), study)
        assert [i.sop_instance_uid for i in found] == [d.SOPInstanceUID for d in datasets]
        assert [
            i.sop_instance_uid for i in find_instances(session, Scope(None), study, series)
        ] == [d.SOPInstanceUID for d in datasets]
        one = find_instance(session, Scope(None), study, series, datasets[2].SOPInstanceUID)
        assert one.sop_instance_uid == datasets[2].SOPInstanceUID and one.frame_count == 1
        # Another site's study, an unknown UID, a series of no such study, a hostile UID:
        # all look the same.
        for args in (
            (Scope(frozenset({99})), study),
            (Scope(None), new_uid()),
            (Scope(None), new_uid(), series),
            (Scope(None), "../../etc/passwd"),
        ):
            with pytest.raises(NotFound):
                find_instances(session, *args)


def test_native_frame_bytes_are_the_pixels(archive: Archive) -> None:
    ds = ct_datasets(1)[0]
    archive.ingest_instance(part10(ds), SITE_SOURCE)
    with archive.sessions() as session:
        instance = find_instance(
            session, Scope(None), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
    assert read_frame(archive.objects, instance, 1) == ds.PixelData
    for bad in (0, 2, -1):
        with pytest.raises(FrameNotFound):
            read_frame(archive.objects, instance, bad)
    with pytest.raises(FrameNotFound):
        read_frames(archive.objects, instance, [1, 3])


@pytest.mark.parametrize("name", ["rtdose_rle.dcm", "examples_ybr_color.dcm", "rtdose.dcm"])
def test_multiframe_frames_are_pydicoms_frames(archive: Archive, name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    raw = Path(path).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.StudyInstanceUID = new_uid()  # each test owns its study
    archive.ingest_instance(part10(ds), SITE_SOURCE)
    with archive.sessions() as session:
        instance = find_instance(
            session, Scope(None), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
    assert instance.frame_count == int(ds.NumberOfFrames)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(
            pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=instance.frame_count)
        )
    else:
        size = len(ds.PixelData) // instance.frame_count
        frames = [ds.PixelData[i * size : (i + 1) * size] for i in range(instance.frame_count)]
    assert read_frames(archive.objects, instance, [instance.frame_count, 1]) == [
        frames[-1],
        frames[0],
    ]
