"""Result files come only from safe places, are checked before decoding, and the token goes nowhere but the API."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from helpers import node_inputs, run_node
from runcomfy_seedream.api import RetryPolicy
from runcomfy_seedream.api.downloads import ResultDownloader, UrlPolicy, decode_image, resolve_host
from runcomfy_seedream.api.errors import DownloadError


def test_the_token_is_sent_to_the_api_and_never_with_result_downloads(fake, comfy):
    run_node(**node_inputs())
    token = fake.behaviour.token
    api_calls = fake.requests_to("/v1/")
    downloads = fake.requests_to("/files/")
    assert api_calls and all(r.headers.get("Authorization") == f"Bearer {token}" for r in api_calls)
    assert len(downloads) == 3 and all("Authorization" not in r.headers for r in downloads)
    assert not any(token in text for text in comfy.progress_texts())


async def _resolver(host: str, port: int) -> list[str]:
    """A stand-in DNS: the names a hostile result could use, and one public CDN name."""
    table = {"cdn.runcomfy.net": ["104.18.2.3"], "rebind.example.com": ["104.18.2.3", "127.0.0.1"], "meta.example.com": ["169.254.169.254"]}
    if host in table:
        return table[host]
    return await resolve_host(host, port)  # numeric forms, localhost: the machine's own resolver


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com/a.png",
        "file:///etc/passwd",
        "ftp://x/a.png",
        "https://10.0.0.5/a.png",
        "https://localhost/a.png",
        "https://2130706433/a.png",
        "https://127.1/a.png",
        "https://0x7f000001/a.png",
        "https://[::1]/a.png",
        "https://[::ffff:127.0.0.1]/a.png",
        "https://169.254.169.254/latest/meta-data",
        "https://224.0.0.1/a.png",
        "https://0.0.0.0/a.png",
        "https://[2002:7f00:1::1]/a.png",  # 6to4, embedding 127.0.0.1
        "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.png",  # Teredo, embedding 127.0.0.1
        "https://rebind.example.com/a.png",
        "https://meta.example.com/a.png",
        "https://localhost./a.png",  # the same name, fully qualified
        "https://LOCALHOST/a.png",
        "https://%6c%6fcalhost/a.png",  # percent-encoded: no resolver looks it up as localhost, nor is it a public name
        "https://[fe80::1%25eth0]/a.png",  # link-local with a zone id
    ],
)
def test_result_urls_are_judged_by_the_address_they_resolve_to(url):
    policy = UrlPolicy.for_base_url("https://model-api.runcomfy.net/v1", resolve=_resolver)
    with pytest.raises(DownloadError) as caught:
        asyncio.run(policy.check(url, "Result image 1"))
    assert caught.value.collectable and not caught.value.transient, "refused at once, not retried as a failed look-up"
    asyncio.run(policy.check("https://cdn.runcomfy.net/out/1.png", "Result image 1"))  # the normal case passes


def test_a_result_that_is_not_an_image_is_refused():
    with pytest.raises(DownloadError) as caught:
        decode_image(b"<html>expired</html>", "Result image 2")
    assert "Result image 2 is not an image" in str(caught.value)


def test_a_decompression_bomb_is_not_decoded():
    buffer = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buffer, format="PNG")  # 144 MP of zeros compresses to a tiny file
    assert len(buffer.getvalue()) < 1_000_000
    with pytest.raises(DownloadError) as caught:
        decode_image(buffer.getvalue(), "Result image 1")
    assert "safety limit" in str(caught.value) or "too large" in str(caught.value)


def test_an_oversized_file_is_cut_off(fake, comfy):
    run_node(**node_inputs())
    url = next(iter(fake.jobs.values()))
    urls = fake.result_body(url, include_cost=False)["output"]["images"]
    downloader = ResultDownloader(UrlPolicy.for_base_url(fake.base_url), max_bytes=100)
    with pytest.raises(DownloadError) as caught:
        asyncio.run(downloader.fetch_all(urls, request_id="r-1"))
    assert "over the" in str(caught.value) and "limit" in str(caught.value) and caught.value.request_id == "r-1"


def test_an_expired_result_link_says_so(fake, comfy):
    downloader = ResultDownloader(UrlPolicy.for_base_url(fake.base_url))
    with pytest.raises(DownloadError) as caught:
        asyncio.run(downloader.fetch_all([f"{fake.origin}/files/unknown/0.png"]))
    assert "not available (HTTP 404)" in str(caught.value) and "change the seed" in str(caught.value)
    assert caught.value.transient  # asking RunComfy for the result again may give working links
    assert len(fake.requests_to("/files/unknown/")) == 3  # a fresh link may fail for a moment: tried three times


def test_a_redirect_loop_is_a_download_error_with_the_request_id(fake):
    downloader = ResultDownloader(UrlPolicy.for_base_url(fake.base_url))
    with pytest.raises(DownloadError) as caught:
        asyncio.run(downloader.fetch_all([f"{fake.origin}/loop/a.png"], request_id="r-2"))
    assert "redirect loop" in str(caught.value) and caught.value.request_id == "r-2"
    assert len(fake.requests_to("/loop/")) == 6  # the first request and 5 redirects, then it stops


def test_downloads_stop_at_their_overall_deadline(fake):
    from runcomfy_seedream.fake_service import Fault

    fake.behaviour.inject("file", *[Fault("http", status=503)] * 1000)
    downloader = ResultDownloader(
        UrlPolicy.for_base_url(fake.base_url), retry=RetryPolicy.until_deadline(base_delay_s=0.01, max_delay_s=0.05), deadline_s=0.6
    )
    with pytest.raises(DownloadError) as caught:
        asyncio.run(downloader.fetch_all([f"{fake.origin}/files/x/0.png"], request_id="r-3"))
    assert "within 1 s" in str(caught.value) and caught.value.transient and caught.value.request_id == "r-3"


def test_a_truncated_download_is_retried(fake, comfy):
    from runcomfy_seedream.fake_service import Fault

    fake.behaviour.inject("file", Fault("truncate"))
    images, *_ = run_node(**node_inputs())
    assert images.shape[0] == 3 and float(images.std()) > 0.01


def test_decoded_pixels_match_the_file():
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert np.array_equal(decode_image(buffer.getvalue(), "x"), pixels)
