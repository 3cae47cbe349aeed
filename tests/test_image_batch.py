"""Results assembled into one batch: centred on the largest canvas, never stretched, within a memory budget."""

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from runcomfy_seedream.api import ImageBatch


def solid(height: int, width: int, value: int) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_smaller_images_are_centred_on_the_largest_canvas():
    batch = ImageBatch([(10, 20), (30, 40), (10, 20)])
    batch.place(0, solid(10, 20, 255))
    batch.place(2, solid(10, 20, 51))
    batch.place(1, solid(30, 40, 102))
    array = batch.array()
    assert array.shape == (3, 30, 40, 3) and array.dtype == np.float32 and batch.padded and not batch.shrunk
    assert np.all(array[0, 10:20, 10:30] == 1.0) and np.all(array[0, :10] == 0.0)
    assert np.allclose(array[2, 10:20, 10:30], 0.2) and np.allclose(batch.native(1), 0.4)
    assert batch.native(0).shape == (10, 20, 3)


def held_bytes(batch: ImageBatch) -> int:
    return batch.array().nbytes + sum(batch.native(i).nbytes for i in range(batch.count) if batch.keeps_natives)


def test_opposite_aspects_over_the_budget_are_fitted_keeping_their_aspect():
    sizes = [(400, 1000), (1000, 400)]  # padded, they would need a 1000x1000 canvas each
    natives = 2 * 400 * 1000 * 12
    budget = natives + 2 * 500 * 500 * 12  # the native copies, and room for two 500x500 float32 RGB images
    batch = ImageBatch(sizes, max_bytes=budget)
    batch.place(0, solid(400, 1000, 255))
    batch.place(1, solid(1000, 400, 255))
    assert batch.array().shape == (2, 500, 500, 3) and held_bytes(batch) <= budget
    assert batch.sizes == [(200, 500), (500, 200)] and batch.shrunk == [0, 1]  # aspect 2.5 kept, never stretched
    assert [batch.native(i).shape for i in range(2)] == [(400, 1000, 3), (1000, 400, 3)]  # image_list stays native
    assert not batch.list_shrunk


def test_the_budget_bounds_the_native_copies_too():
    sizes = [(1000, 4000), (4000, 1000)] * 4  # eight large results of opposite aspect
    budget = 64 * 2**20
    batch = ImageBatch(sizes, max_bytes=budget)
    for index, (height, width) in enumerate(sizes):
        batch.place(index, solid(height, width, 200))
    assert held_bytes(batch) <= budget and batch.list_shrunk
    for index, (height, width) in enumerate(sizes):
        fitted_h, fitted_w = batch.native(index).shape[:2]
        assert abs(fitted_w / fitted_h - width / height) < 0.05  # never stretched


def test_parallel_placement_loses_nothing():
    sizes = [(8 + (i % 5) * 4, 12 + (i % 3) * 6) for i in range(40)]
    batch = ImageBatch(sizes)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: batch.place(item[0], solid(*item[1], item[0] + 1)), enumerate(sizes)))
    for index, size in enumerate(sizes):
        assert batch.native(index).shape[:2] == size
        assert np.allclose(batch.native(index), (index + 1) / 255.0)


def test_which_images_were_scaled_down_is_said_once():
    batch = ImageBatch([(400, 1000), (1000, 400)], max_bytes=2 * 400 * 1000 * 12 + 2 * 500 * 500 * 12)
    assert batch.shrunk == [0, 1]
    assert not hasattr(batch, "fitted")  # `shrunk` says it; no second flag to keep in step


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_after_the_low_memory_fallback_the_note_states_the_budget_used(monkeypatch):
    from runcomfy_seedream.api import downloads

    class CrampedBatch(ImageBatch):  # a machine where only the small fallback batch can be allocated
        def __init__(self, sizes, *, max_bytes):
            if max_bytes > downloads.SMALL_BATCH_BYTES:
                raise MemoryError
            super().__init__(sizes, max_bytes=max_bytes)

    monkeypatch.setattr(downloads, "ImageBatch", CrampedBatch)
    files = [png(solid(1000, 6000, 90)), png(solid(6000, 1000, 180))]  # 6000x6000 canvases, padded
    assembled = asyncio.run(downloads.assemble(files, label="Result image", max_bytes=4 * 2**30))
    assert assembled.warning and "assembled smaller" in assembled.warning
    (note,) = assembled.notes
    assert f"{downloads.SMALL_BATCH_BYTES // 2**20} MiB memory budget" in note and "4096 MiB" not in note
    assert assembled.images.shrunk == [0, 1]


def test_a_large_batch_is_black_around_each_image_and_writable_like_any_array():
    sizes = [(1000, 2000), (500, 1200), (1000, 2000)]  # over 4 MiB: the batch is mapped apart from numpy's heap
    batch = ImageBatch(sizes)
    for index, (height, width) in enumerate(sizes):
        batch.place(index, solid(height, width, 255))
    array = batch.array()
    assert array.shape == (3, 1000, 2000, 3) and array.dtype == np.float32 and array.flags.writeable
    assert np.all(array[1, 250:750, 400:1600] == 1.0) and not array[1, :250].any() and not array[1, :, :400].any()
    assert np.all(array[0] == 1.0) and batch.native(1).shape == (500, 1200, 3) and np.all(batch.native(1) == 1.0)
    torch = pytest.importorskip("torch")
    assert torch.from_numpy(array).sum().item() == 2 * 1000 * 2000 * 3 + 500 * 1200 * 3  # ComfyUI gets it without a copy
