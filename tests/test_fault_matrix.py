"""Each way the service or the network can misbehave, with the outcome a user sees and the number of paid submits.

Every row runs the node end to end against the local fake service. "images" is what
the node returns (or the error it raises); a paid run always has exactly one submit.
"""

from __future__ import annotations

import pytest

from helpers import node_inputs, run_node
from runcomfy_seedream.api import downloads
from runcomfy_seedream.api.errors import DownloadError, JobFailedError
from runcomfy_seedream.fake_service import Fault


def _bomb() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG")  # 144 MP of zeros in a few hundred KB
    return buffer.getvalue()


STORM = [Fault("http", status=429, retry_after="0")] * 6
STORM_NO_HINT = [Fault("http", status=429)] * 3

# (name, {endpoint: faults}, other behaviour, expected: number of images or an error type, words in the error)
MATRIX = [
    ("429 storm with Retry-After on status", {"status": STORM}, {}, 3, None),
    ("429 storm without Retry-After on status", {"status": STORM_NO_HINT}, {}, 3, None),
    ("429 on result", {"result": [Fault("http", status=429, retry_after="0")] * 2}, {}, 3, None),
    ("5xx on status and result", {"status": [Fault("http", status=502)], "result": [Fault("http", status=503)]}, {}, 3, None),
    ("connection reset on status", {"status": [Fault("drop")] * 2}, {}, 3, None),
    ("truncated JSON on status", {"status": [Fault("garbage")]}, {}, 3, None),
    ("truncated JSON on result", {"result": [Fault("garbage")]}, {}, 3, None),
    ("5xx on downloads", {"file": [Fault("http", status=500), Fault("http", status=503)]}, {}, 3, None),
    ("connection reset on a download", {"file": [Fault("drop")]}, {}, 3, None),
    ("truncated download", {"file": [Fault("truncate")]}, {}, 3, None),
    ("a download stalls once", {"file": [Fault("stall", seconds=1.5)]}, {}, 3, None),
    ("result URL gone (404)", {"file": [Fault("http", status=404)]}, {}, DownloadError, ["no longer available", "expire"]),
    ("job fails with a reason", {}, {"fail_with": "NSFW content detected"}, JobFailedError, ["NSFW content detected"]),
    ("fewer images than asked", {}, {"images_returned": 1}, 1, None),
    ("outputs of mixed sizes", {}, {"mixed_sizes": True}, 3, None),
    ("job finishes with no images", {}, {"images_returned": 0}, JobFailedError, ["no images"]),
    ("result is not an image", {"file": [Fault("body", body=b"<html>Access denied</html>")]}, {}, DownloadError, ["not an image"]),
    ("result is a decompression bomb", {"file": [Fault("body", body=_bomb())]}, {}, DownloadError, ["too large to decode safely"]),
    ("result file is too large", {"file": [Fault("body", body=b"x" * 3_000_000)]}, {}, DownloadError, ["over the 2 MiB limit"]),
    ("result URL on a private host", {}, {"result_urls": ["https://10.1.2.3/out.png"]}, DownloadError, ["not a public host"]),
    ("result URL not https", {}, {"result_urls": ["http://cdn.example.com/out.png"]}, DownloadError, ["only https"]),
]


@pytest.mark.parametrize("name,faults,behaviour_changes,expected,words", MATRIX, ids=[row[0] for row in MATRIX])
def test_fault(fake, comfy, monkeypatch, name, faults, behaviour_changes, expected, words):
    monkeypatch.setattr(downloads, "DOWNLOAD_TIMEOUT_S", 0.75)
    monkeypatch.setattr(downloads, "MAX_DOWNLOAD_BYTES", 2 * 1024 * 1024)
    for endpoint, injected in faults.items():
        fake.behaviour.inject(endpoint, *injected)
    for key, value in behaviour_changes.items():
        setattr(fake.behaviour, key, value)

    if isinstance(expected, int):
        images, image_list, urls, request_id = run_node(**node_inputs())
        assert images.shape[0] == expected == len(image_list) == len(urls.splitlines())
        assert float(images.std()) > 0.01
        assert request_id in fake.jobs
    else:
        with pytest.raises(expected) as caught:
            run_node(**node_inputs())
        for word in words:
            assert word in str(caught.value)
        assert next(iter(fake.jobs)) in str(caught.value), "the request id is reported"
    assert fake.submits == 1 and fake.submit_attempts == 1, "exactly one paid submit"
    assert all(not queue for queue in fake.behaviour.faults.values()), "every injected fault was hit"
