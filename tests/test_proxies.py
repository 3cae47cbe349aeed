"""Proxies set in the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY): a proxy that cannot be used is named
before anything is sent, and trouble reaching one names it (the variable and host:port, never its credentials)."""

from __future__ import annotations

import socket

import pytest

from helpers import node_inputs, quick_timing, run_node
from runcomfy_seedream.api.config import proxy_for, unusable_proxy
from runcomfy_seedream.api.errors import ConfigurationError, ServiceError

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxies(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_socks_proxy_without_socksio_is_named_before_anything_is_sent(fake, comfy, no_proxies):
    """Before: httpx's own ImportError ("Using SOCKS proxy, but the 'socksio' package is not installed…")."""
    no_proxies.setenv("ALL_PROXY", "socks5://vpnuser:pw-9f3e@127.0.0.1:1080")
    if unusable_proxy() is None:
        pytest.skip("socksio is installed here: SOCKS proxies work")
    with pytest.raises(ConfigurationError) as caught:
        run_node(**node_inputs())
    message = str(caught.value)
    assert "ALL_PROXY" in message and "SOCKS" in message and "127.0.0.1:1080" in message and "socksio" in message
    assert "pw-9f3e" not in message and "vpnuser" not in message and "Nothing was sent" in message
    assert fake.requests == []


def test_a_proxy_port_that_cannot_be_is_refused_in_words_before_anything_is_sent(fake, comfy, no_proxies):
    """Before: HTTP_PROXY=http://u:pw@127.0.0.1:99999 ended the run with an ExceptionGroup from the connection pool."""
    no_proxies.setenv("HTTP_PROXY", "http://corp:pw-51aa@127.0.0.1:99999")
    with pytest.raises(ConfigurationError) as caught:
        run_node(timing=quick_timing(), **node_inputs())
    assert "HTTP_PROXY is set to a proxy address that cannot be used" in str(caught.value) and "pw-51aa" not in str(caught.value)
    assert fake.requests == []


def test_a_dead_proxy_is_named_with_its_variable_and_host_only(fake, comfy, no_proxies):
    """Before: "…Check your connection and run again." with no word of the proxy every request went through."""
    port = closed_port()
    no_proxies.setenv("HTTP_PROXY", f"http://corp:pw-51aa@127.0.0.1:{port}")
    with pytest.raises(ServiceError) as caught:
        run_node(timing=quick_timing(), **node_inputs())
    message = str(caught.value)
    assert f"the proxy 127.0.0.1:{port} set by HTTP_PROXY" in message and "nothing was charged" in message
    assert "pw-51aa" not in message and "corp" not in message
    assert fake.requests == [] and fake.submits == 0


@pytest.mark.parametrize(
    "env,url,expected",
    [
        ({}, "https://model-api.runcomfy.net/v1", None),
        ({"HTTPS_PROXY": "http://u:p@proxy.corp:3128"}, "https://model-api.runcomfy.net/v1", ("HTTPS_PROXY", "proxy.corp:3128")),
        ({"https_proxy": "proxy.corp:8080", "HTTPS_PROXY": "other:1"}, "https://a.example/", ("https_proxy", "proxy.corp:8080")),
        ({"HTTP_PROXY": "http://p:1"}, "https://a.example/", None),  # only for http:// addresses
        ({"ALL_PROXY": "socks5://u:p@[::1]:1080"}, "https://a.example/", ("ALL_PROXY", "[::1]:1080")),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://a.example.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, "https://example.com/", ("HTTPS_PROXY", "p:1")),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://a.example/", None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "127.0.0.1, localhost"}, "https://127.0.0.1:8188/", None),
        ({"HTTPS_PROXY": "http://u:p@bad:port"}, "https://a.example/", ("HTTPS_PROXY", "bad")),
    ],
)
def test_the_proxy_for_an_address_is_found_as_httpx_finds_it(env, url, expected):
    found = proxy_for(url, env)
    assert (found.variable, found.where) == expected if expected else found is None
    assert found is None or ("u:" not in str(found) and "@" not in str(found))


@pytest.mark.parametrize(
    "env,words",
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, None),
        ({"HTTPS_PROXY": "ftp://u:secret@proxy:21"}, ["HTTPS_PROXY", "ftp://proxy:21", "only http://"]),
        ({"all_proxy": "socks4://proxy:1080"}, ["all_proxy", "socks4://proxy:1080"]),
        ({"HTTP_PROXY": ""}, None),
        ({"ALL_PROXY": "socks5://u:secret@vpn:1080", "NO_PROXY": "*"}, None),  # httpx then uses no proxy at all
        ({"HTTPS_PROXY": "http://u:secret@proxy:99999"}, ["HTTPS_PROXY", "http://proxy", "port is not a number from 0 to 65535"]),
        ({"HTTPS_PROXY": "http://u:secret@"}, ["HTTPS_PROXY", "(no host): it names no host"]),
        ({"HTTP_PROXY": "http://[bad"}, ["HTTP_PROXY", "it is not a URL"]),
        ({"HTTP_PROXY": "http//u:secret@proxy:3128"}, ["HTTP_PROXY", "it is not a URL", "http://host:port"]),
    ],
)
def test_a_proxy_kind_httpx_cannot_use_is_refused_in_words(env, words):
    why = unusable_proxy(env)
    if words is None:
        assert why is None
    else:
        assert why is not None and all(word in why for word in words) and "secret" not in why


def test_a_download_through_a_dead_proxy_names_it(fake, no_proxies):
    import asyncio

    from runcomfy_seedream.api.client import RetryPolicy
    from runcomfy_seedream.api.downloads import ResultDownloader, UrlPolicy
    from runcomfy_seedream.api.errors import DownloadError

    port = closed_port()
    no_proxies.setenv("HTTP_PROXY", f"http://corp:pw-51aa@127.0.0.1:{port}")
    downloader = ResultDownloader(UrlPolicy.for_base_url(fake.base_url), retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(DownloadError) as caught:
        asyncio.run(downloader.fetch_all([f"{fake.origin}/files/x/0.png"], request_id="r-1"))
    assert f"the proxy 127.0.0.1:{port} set by HTTP_PROXY" in str(caught.value) and "pw-51aa" not in str(caught.value)


def test_a_dead_proxy_under_a_spending_limit_is_named_where_the_price_could_not_be_read(fake, comfy, no_proxies):
    """Before: "RunComfy's price for this model could not be read…", with no word of the proxy it went through."""
    from runcomfy_seedream.api import shared
    from runcomfy_seedream.api.errors import SpendingLimitError
    from runcomfy_seedream.api.spending import PER_RUN_ENV

    shared.reset_all()  # no price known to this process
    port = closed_port()
    no_proxies.setenv("HTTP_PROXY", f"http://corp:pw-51aa@127.0.0.1:{port}")
    no_proxies.setenv(PER_RUN_ENV, "5")
    with pytest.raises(SpendingLimitError) as caught:
        run_node(timing=quick_timing(limit_price_wait_s=5.0), **node_inputs())
    shared.reset_all()
    message = str(caught.value)
    assert f"it is read through the proxy 127.0.0.1:{port} set by HTTP_PROXY" in message and "pw-51aa" not in message
    assert fake.submits == 0
