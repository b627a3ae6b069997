"""Worker discovery helpers: endpoint rules and the shapes workers report."""

from __future__ import annotations

import pytest

from bisllm.router.registry import (
    DiscoveryError,
    WorkerInfo,
    _apply_event_sources,
    _connect_address,
    _publisher_binds,
)


@pytest.mark.parametrize(
    ("endpoint", "binds"),
    [
        ("ipc:///tmp/x", True),
        ("tcp://*:5557", True),
        ("tcp://[::]:5557", True),
        ("tcp://10.0.0.5:5557", False),  # vLLM connects: the subscriber must bind
    ],
)
def test_vllm_bind_rule(endpoint, binds):
    assert _publisher_binds(endpoint) is binds


def test_wildcard_becomes_the_worker_host():
    assert _connect_address("tcp://*:5557", "http://10.1.2.3:8000") == "tcp://10.1.2.3:5557"
    assert _connect_address("tcp://0.0.0.0:9", "http://h:1") == "tcp://h:9"
    assert _connect_address("ipc:///tmp/a", "http://h:1") == "ipc:///tmp/a"


def test_vllm_kv_event_sources_shape():
    info = WorkerInfo(model="m")
    _apply_event_sources(
        info,
        {
            "0": {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": "tcp://*:5557",
                "replay_endpoint": "tcp://*:5558",
                "topic": "",
            }
        },
    )
    assert info.kv_events_endpoint == "tcp://*:5557"
    assert info.kv_replay_endpoint == "tcp://*:5558"
    empty = WorkerInfo(model="m")
    _apply_event_sources(empty, {})
    assert empty.kv_events_endpoint is None


def test_worker_info_validation():
    info = WorkerInfo.from_json({"model": "m", "block_size": 32, "unknown_field": 1})
    assert info.block_size == 32
    with pytest.raises(DiscoveryError):
        WorkerInfo.from_json({"block_size": 16})
    with pytest.raises(DiscoveryError):
        WorkerInfo.from_json({"model": "m", "block_size": 0})
