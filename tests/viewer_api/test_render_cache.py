"""The rendering cache (bounded in bytes, least recently used first out, thread-safe) and the
prefetcher, alone and behind the rendered routes (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from telerad.viewer_api.rendering.cache import ByteCache, Prefetcher
from telerad.viewer_api.rendering.pipeline import RenderRequest
from tests.conftest import Api
from tests.factories import ct_instances, multiframe_ct, multipart_related

# --- ByteCache --------------------------------------------------------------------------------


def test_cache_never_holds_more_than_its_capacity() -> None:
    cache = ByteCache(100)

    for number in range(10):
        assert cache.put(number, f"value {number}", 30)
        assert cache.stats().bytes <= 100

    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 90, 7)
    assert [cache.get(n) for n in range(10)] == [None] * 7 + ["value 7", "value 8", "value 9"]


def test_least_recently_used_goes_first() -> None:
    cache = ByteCache(100)
    for key in "abc":
        cache.put(key, key.upper(), 30)

    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("d", "D", 30)

    assert "b" not in cache
    assert all(key in cache for key in "acd")


def test_oversized_values_are_not_kept_and_replacing_resizes() -> None:
    cache = ByteCache(100)
    cache.put("small", 1, 10)

    assert not cache.put("huge", 2, 101)
    assert "huge" not in cache and cache.get("small") == 1
    cache.put("small", 3, 60)
    assert cache.stats().bytes == 60 and cache.get("small") == 3


def test_zero_capacity_keeps_nothing() -> None:
    cache = ByteCache(0)
    assert not cache.put("k", "v", 1)
    assert cache.get("k") is None


def test_cache_is_consistent_under_concurrent_use() -> None:
    cache = ByteCache(64 * 10)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(3000):
                key = (seed * 7 + i) % 50
                if cache.get(key) is None:
                    cache.put(key, key, 64)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = cache.stats()
    assert not errors
    assert stats.bytes == 64 * stats.entries <= 640
    assert stats.hits + stats.misses == 8 * 3000


# --- Prefetcher ---------------------------------------------------------------------------------


@pytest.fixture
def prefetcher() -> Iterator[Prefetcher]:
    running = Prefetcher(workers=2, max_pending=3)
    yield running
    running.close()


def test_prefetcher_runs_jobs_once_per_key_and_bounds_its_backlog(prefetcher: Prefetcher) -> None:
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> Any:
        return lambda: (gate.wait(10), ran.append(name))

    assert prefetcher.submit("a", job("a"))
    assert not prefetcher.submit("a", job("a again"))  # already pending
    assert prefetcher.submit("b", job("b"))
    assert prefetcher.submit("c", job("c"))
    assert not prefetcher.submit("d", job("d"))  # backlog full: dropped, not queued
    gate.set()

    assert prefetcher.wait_idle(10)
    assert sorted(ran) == ["a", "b", "c"]
    assert prefetcher.submit("a", job("a"))  # done, so it may run again
    assert prefetcher.wait_idle(10)


def test_a_failing_job_does_not_stop_the_prefetcher(prefetcher: Prefetcher) -> None:
    def fail() -> None:
        raise RuntimeError("neighbour cannot be rendered")

    done = threading.Event()
    assert prefetcher.submit("bad", fail)
    assert prefetcher.wait_idle(10)
    assert prefetcher.submit("good", done.set)
    assert prefetcher.wait_idle(10) and done.is_set()


def test_a_request_claims_a_job_running_for_it_and_takes_back_one_not_started() -> None:
    """What a request needs is never produced twice: it waits for the job already producing
    it, and cancels one still queued (then does the work itself)."""
    prefetcher = Prefetcher(workers=1, max_pending=4)
    started, gate = threading.Event(), threading.Event()
    ran: list[str] = []

    def running() -> str:
        started.set()
        gate.wait(10)
        ran.append("running")
        return "image"

    try:
        assert prefetcher.submit("running", running)
        assert prefetcher.submit("queued", lambda: ran.append("queued"))
        assert started.wait(10)

        assert prefetcher.claim("queued") is None  # not started: cancelled, the caller renders
        claimed = prefetcher.claim("running")
        assert claimed is not None
        gate.set()
        assert claimed.result(10) == "image"  # the running job's own result
        assert prefetcher.wait_idle(10)
        assert ran == ["running"]  # the cancelled job never ran
        assert prefetcher.claim("running") is None  # finished: nothing to claim
    finally:
        gate.set()
        prefetcher.close()


def test_no_workers_means_no_prefetch() -> None:
    disabled = Prefetcher(workers=0)
    assert not disabled.submit("k", lambda: None)
    assert disabled.wait_idle(0.1)


# --- behind the routes ------------------------------------------------------------------------


def _store(api: Api, instances: list[bytes]) -> list[pydicom.Dataset]:
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers("site")}
    assert api.client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    return [pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True) for raw in instances]


def _path(ds: pydicom.Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _rendered_key(raw: bytes, frame: int, request: RenderRequest) -> tuple[Any, ...]:
    return ("rendered", hashlib.sha256(raw).hexdigest(), frame, request)


def test_rendering_a_slice_prefetches_its_neighbours(shared_api: Api) -> None:
    renderer = shared_api.services.renderer
    reach = shared_api.services.settings.rendering.prefetch_neighbours
    raws = ct_instances(7, size=32)
    series = _store(shared_api, raws)
    request = RenderRequest("image/png", None, None, 90)
    keys = [_rendered_key(raw, 1, request) for raw in raws]

    response = shared_api.client.get(
        _path(series[3]) + "/rendered",
        headers={**shared_api.headers("rad1"), "Accept": "image/png"},
    )
    assert response.status_code == 200
    assert renderer.prefetcher.wait_idle(30)

    near = {3 - d for d in range(1, reach + 1)} | {3 + d for d in range(1, reach + 1)}
    assert reach >= 1
    for index, key in enumerate(keys):
        assert (key in renderer.cache) == (index in near | {3}), index
    hits = renderer.cache.stats().hits
    shared_api.client.get(
        _path(series[4]) + "/rendered",
        headers={**shared_api.headers("rad1"), "Accept": "image/png"},
    )
    assert renderer.cache.stats().hits > hits  # the scroll found its slice ready
    # The listing is cached now: the neighbours are chosen in the request itself.
    assert renderer.prefetcher.wait_idle(30)
    assert keys[4 + reach] in renderer.cache


def test_frames_of_a_multiframe_instance_are_prefetched(shared_api: Api) -> None:
    renderer = shared_api.services.renderer
    raw = multiframe_ct(frames=5, size=16)
    [ds] = _store(shared_api, [raw])
    request = RenderRequest("image/jpeg", None, None, 90)

    response = shared_api.client.get(
        _path(ds) + "/frames/1/rendered", headers=shared_api.headers("admin")
    )
    assert response.status_code == 200
    assert renderer.prefetcher.wait_idle(30)

    cached = [_rendered_key(raw, n, request) in renderer.cache for n in range(1, 6)]
    assert cached == [True, True, True, False, False]  # frame 1, then 2 and 3 (reach 2)


def test_thumbnails_do_not_prefetch(shared_api: Api) -> None:
    renderer = shared_api.services.renderer
    raws = ct_instances(3, size=16)
    series = _store(shared_api, raws)
    completed = renderer.prefetcher.completed

    response = shared_api.client.get(
        _path(series[1]) + "/thumbnail", headers=shared_api.headers("admin")
    )

    assert response.status_code == 200
    assert renderer.prefetcher.wait_idle(30)
    assert renderer.prefetcher.completed == completed


def test_the_cache_stays_within_its_budget_behind_the_routes(shared_api: Api) -> None:
    renderer = shared_api.services.renderer
    series = _store(shared_api, ct_instances(4, size=64))
    saved = renderer.cache.capacity
    renderer.cache.clear()
    renderer.cache.capacity = 6_000  # a few 64 x 64 rendered images
    try:
        for ds in series:
            for window in ("lung", "bone", "brain"):
                path = f"{_path(ds)}/rendered?window={window}"
                response = shared_api.client.get(path, headers=shared_api.headers("admin"))
                assert response.status_code == 200
                assert renderer.cache.stats().bytes <= 6_000
        assert renderer.prefetcher.wait_idle(30)
        stats = renderer.cache.stats()
        assert stats.bytes <= 6_000 and stats.evictions > 0
    finally:
        renderer.cache.capacity = saved


def test_native_frames_are_read_again_and_compressed_ones_kept_decoded(shared_api: Api) -> None:
    """A native slice costs a byte-range read; holding it decoded would cost the cache more
    (pipeline module docstring). A compressed frame is worth keeping decoded."""
    renderer = shared_api.services.renderer
    native = ct_instances(1, size=32)[0]
    rle = Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes()
    stored = _store(shared_api, [native]) + _store(shared_api, [rle])

    for ds in stored:
        response = shared_api.client.get(
            _path(ds) + "/rendered", headers=shared_api.headers("admin")
        )
        assert response.status_code == 200
    assert renderer.prefetcher.wait_idle(30)

    def decoded(raw: bytes) -> bool:
        return ("frame", hashlib.sha256(raw).hexdigest(), 1) in renderer.cache

    assert not decoded(native)
    assert decoded(rle)
    request = RenderRequest(
        "image/jpeg", None, None, shared_api.services.settings.rendering.jpeg_quality
    )
    assert _rendered_key(native, 1, request) in renderer.cache
