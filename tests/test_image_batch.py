"""Results assembled into one batch: centred on the largest canvas whatever order they arrive in."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runcomfy_seedream.api.image_batch import ImageBatch


def solid(height: int, width: int, value: int) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_a_larger_late_arrival_grows_the_canvas_and_keeps_earlier_images_centred():
    batch = ImageBatch(3)
    batch.place(0, solid(10, 20, 255))
    batch.place(2, solid(10, 20, 51))
    batch.place(1, solid(30, 40, 102))  # larger: the canvas grows to 30x40
    array = batch.array()
    assert array.shape == (3, 30, 40, 3) and array.dtype == np.float32 and batch.padded
    assert np.all(array[0, 10:20, 10:30] == 1.0) and np.all(array[0, :10] == 0.0)
    assert np.allclose(array[2, 10:20, 10:30], 0.2) and np.allclose(batch.native(1), 0.4)
    assert batch.native(0).shape == (10, 20, 3)


def test_parallel_placement_loses_nothing():
    sizes = [(8 + (i % 5) * 4, 12 + (i % 3) * 6) for i in range(40)]
    batch = ImageBatch(len(sizes))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: batch.place(item[0], solid(*item[1], item[0] + 1)), enumerate(sizes)))
    for index, size in enumerate(sizes):
        assert batch.native(index).shape[:2] == size
        assert np.allclose(batch.native(index), (index + 1) / 255.0)
