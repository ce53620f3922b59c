"""The S3 server the object-storage tests run against, and the fault proxy.

The store commits a manifest generation with a conditional PUT
(`If-None-Match: *`), writes large objects by multipart upload and reads them
with ranged GETs; these tests check first that the real server (VersityGW,
tests/s3server.py) does each of those, then that tests/s3proxy.py makes the
faults the store's tests need (503 SlowDown, a reset mid-body, a slow answer,
a capped link) and that boto3, the benchmark's peer, gets through them. No
timing is asserted: the bandwidth cap is checked by its own accounting.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, EndpointConnectionError

from s3proxy import FaultProxy, on
from s3server import S3ServerMissing, binary

MiB = 1 << 20
WHY_CONDITIONAL = ("the store commits a manifest generation with PUT If-None-Match: *, so that of two "
                   "writers exactly one wins; a server that ignores it turns the commit race into silent "
                   "loss (both writers are told they won, and one generation is overwritten)")


def _error(e: ClientError) -> Tuple[int, str]:
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


def _body(s3, bucket: str, key: str, **kw) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


# --- first: the commit's conditional PUT ---------------------------------------


def test_a_second_put_if_none_match_is_refused_with_412(s3_server, s3_bucket) -> None:
    s3 = s3_server.client(attempts=1)
    s3.put_object(Bucket=s3_bucket, Key="manifest/1", Body=b"first writer", IfNoneMatch="*")
    try:
        s3.put_object(Bucket=s3_bucket, Key="manifest/1", Body=b"second writer", IfNoneMatch="*")
    except ClientError as e:
        assert _error(e) == (412, "PreconditionFailed"), f"{_error(e)}: {WHY_CONDITIONAL}"
    else:
        pytest.fail(f"the S3 server accepted a PUT If-None-Match: * over an existing key: {WHY_CONDITIONAL}")
    assert _body(s3, s3_bucket, "manifest/1") == b"first writer", WHY_CONDITIONAL


def test_of_8_racing_conditional_puts_exactly_one_wins(s3_server, s3_bucket) -> None:
    s3 = s3_server.client(attempts=1)  # the server's own answers, none retried away
    writers = 8
    for round_ in range(3):
        key = f"manifest/{round_}"
        # Bodies large enough that the writes overlap on the server.
        bodies = [f"writer {i}\n".encode() + os.urandom(256 * 1024) for i in range(writers)]
        start = threading.Barrier(writers)
        outcome: List[Optional[Tuple[int, str]]] = [None] * writers

        def put(i: int) -> None:
            start.wait()
            try:
                s3.put_object(Bucket=s3_bucket, Key=key, Body=bodies[i], IfNoneMatch="*")
                outcome[i] = (200, "won")
            except ClientError as e:
                outcome[i] = _error(e)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [i for i, o in enumerate(outcome) if o == (200, "won")]
        assert len(winners) == 1, f"round {round_}: {len(winners)} of {writers} racing writers won " \
                                  f"({outcome}): {WHY_CONDITIONAL}"
        # 412, or 409 ConditionalRequestConflict (S3's answer to a write
        # still in flight), which the store retries into a 412.
        losers = {o for i, o in enumerate(outcome) if i not in winners}
        assert losers <= {(412, "PreconditionFailed"), (409, "ConditionalRequestConflict")}, losers
        assert _body(s3, s3_bucket, key) == bodies[winners[0]], \
            f"round {round_}: the object does not hold the winner's body: {WHY_CONDITIONAL}"


# --- what the store uses: multipart upload, ranged GET -----------------------------


def test_multipart_upload_and_ranged_gets(s3_server, s3_bucket, s3_proxy, tmp_path: Path) -> None:
    data = os.urandom(11 * MiB)
    src = tmp_path / "ckpt.bin"
    src.write_bytes(data)
    s3 = s3_server.client(s3_proxy.endpoint)  # through the proxy, which counts the parts
    s3.upload_file(str(src), s3_bucket, "big", Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3))
    path = f"/{s3_bucket}/big"
    parts = sorted(n for n in (1, 2, 3, 4) for r in s3_proxy.records
                   if on("PUT", path, params={"partNumber": str(n)})(r.method, r.target))
    assert parts == [1, 2, 3], [r.target for r in s3_proxy.records]
    assert s3_proxy.count("POST", path) == 2  # create, complete
    assert sum(r.request_body_bytes for r in s3_proxy.records if r.method == "PUT") == len(data)

    assert _body(s3_server.client(), s3_bucket, "big") == data
    lo, hi = 5 * MiB - 100, 5 * MiB + 923  # across a part boundary
    got = s3.get_object(Bucket=s3_bucket, Key="big", Range=f"bytes={lo}-{hi}")
    assert got["Body"].read() == data[lo:hi + 1]
    assert got["ContentRange"] == f"bytes {lo}-{hi}/{len(data)}"
    assert s3_proxy.records[-1].response_body_bytes == hi + 1 - lo  # only the range crossed the wire
    assert _body(s3, s3_bucket, "big", Range="bytes=-100") == data[-100:]  # a suffix, as a footer read
    assert s3_proxy.errors == []


# --- faults, through the proxy --------------------------------------------------------


def test_a_503_slow_down_is_retried(s3_server, s3_bucket, s3_proxy, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = f"/{s3_bucket}/obj"
    # Without a retry the client sees the proxy's 503 SlowDown: the fault is real.
    s3_proxy.slow_down(1, on("PUT", path))
    with pytest.raises(ClientError) as e:
        s3_server.client(s3_proxy.endpoint, attempts=1).put_object(Bucket=s3_bucket, Key="obj", Body=data)
    assert _error(e.value) == (503, "SlowDown")

    s3 = s3_server.client(s3_proxy.endpoint, attempts=3)
    s3_proxy.slow_down(1, on("PUT", path))
    s3.put_object(Bucket=s3_bucket, Key="obj", Body=data)
    assert [r.status for r in s3_proxy.records if r.method == "PUT" and r.path == path] == [503, 503, 200]
    assert _body(s3_server.client(), s3_bucket, "obj") == data

    # One part of a multipart upload throttled: that part alone is sent again.
    big = os.urandom(10 * MiB + 1)
    (tmp_path / "big").write_bytes(big)
    part2 = on("PUT", f"/{s3_bucket}/big", params={"partNumber": "2"})
    s3_proxy.slow_down(1, part2)
    s3.upload_file(str(tmp_path / "big"), s3_bucket, "big",
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    assert [r.status for r in s3_proxy.records if part2(r.method, r.target)] == [503, 200]
    assert s3_proxy.pending_faults() == 0
    assert _body(s3_server.client(), s3_bucket, "big") == big


def test_a_reset_mid_body_is_retried(s3_server, s3_bucket, s3_proxy, tmp_path: Path) -> None:
    data = os.urandom(1 * MiB)
    path = f"/{s3_bucket}/obj"
    s3 = s3_server.client(s3_proxy.endpoint, attempts=3)
    s3_proxy.reset_after(100_000, on("PUT", path))
    s3.put_object(Bucket=s3_bucket, Key="obj", Body=data)
    puts = [r for r in s3_proxy.records if r.method == "PUT" and r.path == path]
    assert [(r.status, r.request_body_bytes) for r in puts] == [(None, 100_000), (200, len(data))]
    assert s3_proxy.resets == 1
    assert _body(s3_server.client(), s3_bucket, "obj") == data  # whole, not the first 100 kB

    # A download reset mid-answer: boto3's transfer manager asks again.
    s3_proxy.reset_after(200_000, on("GET", path), direction="response")
    s3.download_file(s3_bucket, "obj", str(tmp_path / "back"))
    gets = [r for r in s3_proxy.records if r.method == "GET" and r.path == path]
    assert gets[0].response_body_bytes == 200_000 and len(gets) >= 2
    assert s3_proxy.resets == 2
    assert (tmp_path / "back").read_bytes() == data


def test_a_slow_answer_times_out_and_is_retried(s3_server, s3_bucket, s3_proxy) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="obj", Body=b"payload")
    s3_proxy.delay(60, on("GET", f"/{s3_bucket}/obj"))  # stop() ends the proxy's wait
    # Attempts to spare: on a loaded machine an undelayed answer may miss 1 s too.
    s3 = s3_server.client(s3_proxy.endpoint, attempts=4, read_timeout=1, connect_timeout=5)
    assert _body(s3, s3_bucket, "obj") == b"payload"
    gets = [r for r in s3_proxy.records if r.method == "GET"]
    assert len(gets) >= 2 and gets[0].fault == "delay 60.0" and gets[-1].status == 200


def test_the_proxy_counts_bytes_and_caps_bandwidth(s3_server, s3_bucket, s3_proxy) -> None:
    data = os.urandom(200_000)
    s3 = s3_server.client(s3_proxy.endpoint)
    s3.put_object(Bucket=s3_bucket, Key="obj", Body=data)
    assert _body(s3, s3_bucket, "obj") == data
    put, get = s3_proxy.records[-2:]
    assert (put.method, put.status, put.request_body_bytes) == ("PUT", 200, len(data))
    assert (get.method, get.status, get.response_body_bytes) == ("GET", 200, len(data))
    assert s3_proxy.count("PUT", f"/{s3_bucket}/obj") == 1 and s3_proxy.count("GET") == 1
    assert s3_proxy.bytes_up > len(data) and s3_proxy.bytes_down > len(data)  # bodies and heads

    rate = 2_000_000  # bytes/s: 200 kB need 0.1 s of link time
    s3_proxy.set_bandwidth(rate)
    down_before = s3_proxy.bytes_down
    assert _body(s3, s3_bucket, "obj") == data
    down = s3_proxy.link_stats()["down"]
    assert down is not None
    assert down.bytes == s3_proxy.bytes_down - down_before > len(data)  # every byte went through the cap
    assert down.link_time_s == pytest.approx(down.bytes / rate)
    assert down.sleeps >= 1 and down.slept_s > 0  # and it held them back
    s3_proxy.set_bandwidth(None)
    assert s3_proxy.link_stats() == {"up": None, "down": None}


# --- the server process -------------------------------------------------------------------


def test_kill9_then_restart_keeps_what_was_committed(own_s3_server) -> None:
    srv = own_s3_server
    bucket = srv.make_bucket("tpde-kill-1")
    s3 = srv.client()
    data = os.urandom(500_000)
    s3.put_object(Bucket=bucket, Key="committed", Body=data)
    # An upload in flight, never completed, when the server dies.
    up = s3.create_multipart_upload(Bucket=bucket, Key="unfinished")
    s3.upload_part(Bucket=bucket, Key="unfinished", UploadId=up["UploadId"], PartNumber=1, Body=os.urandom(5 * MiB))
    endpoint, pid = srv.endpoint, srv.pid
    assert pid is not None

    srv.kill9()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(EndpointConnectionError):
        srv.client(attempts=1).list_buckets()

    srv.restart()
    assert srv.endpoint == endpoint and srv.pid != pid
    s3 = srv.client()  # a client made before the kill would reconnect as well; this one is fresh
    assert _body(s3, bucket, "committed") == data
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["committed"]  # the unfinished upload is not an object
    s3.put_object(Bucket=bucket, Key="after", Body=b"next")
    assert _body(s3, bucket, "after") == b"next"


def test_a_missing_server_binary_names_the_build_script(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TPDE_VERSITYGW", str(tmp_path / "no-such-versitygw"))
    with pytest.raises(S3ServerMissing) as e:
        binary()
    msg = str(e.value)
    assert ".ci/versitygw.sh" in msg and "\n" not in msg


def test_the_proxy_stops_with_connections_open(s3_server) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    s3 = s3_server.client(proxy.endpoint)
    s3.list_buckets()  # leaves a kept-alive connection open
    proxy.stop()
    with pytest.raises(EndpointConnectionError):
        s3_server.client(proxy.endpoint, attempts=1).list_buckets()
