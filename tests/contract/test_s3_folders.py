"""S3 ``PREFIX=workflows/`` keeps its ``/`` as folders (``workflows/raw-data-r1``), keys
themselves stay safely encoded, a whole run works there, and a bucket written before
folders (the prefix's ``/`` encoded) stays readable (on a throwaway moto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aioboto3
import pytest

from blokrun import Runner
from blokrun.datasources.datasource import Datasource
from blokrun.datasources.registry import create_store
from blokrun.datasources.s3 import S3Store
from tests.conftest import ServerPool
from tests.servers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer

pytestmark = pytest.mark.server


@pytest.fixture
def moto(server_pool: ServerPool) -> MotoServer:
    server = server_pool.get("s3")
    assert isinstance(server, MotoServer)
    return server


@pytest.fixture
async def raw(moto: MotoServer) -> AsyncIterator[Any]:
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    async with session.client("s3", endpoint_url=moto.endpoint) as client:
        yield client


async def names(raw: Any, url_prefix: str) -> list[str]:
    resp = await raw.list_objects_v2(Bucket=BUCKET, Prefix=url_prefix)
    return sorted(o["Key"][len(url_prefix) :] for o in resp.get("Contents", []))


def url_prefix(ds: Datasource) -> str:
    return (ds.settings.url or "").split("/", 3)[3] + "/"


async def test_the_prefix_is_folders_and_keys_stay_encoded(moto: MotoServer, raw: Any) -> None:
    settings = replace(moto.settings(), prefix="workflows/daily/")
    async with Datasource(settings, create_store(settings)) as ds:
        await ds.save("raw-data-r1", b"1")
        await ds.save("a b/c%ü", b"2")
        await ds.save("_blokrun.ckpt.r1/1/0000000001", b"3")
        assert await names(raw, url_prefix(ds)) == [
            "workflows/daily/_blokrun.ckpt.r1%2F1%2F0000000001",
            "workflows/daily/a%20b%2Fc%25%C3%BC",
            "workflows/daily/raw-data-r1",
        ]
        assert await ds.load("a b/c%ü") == b"2"
        assert sorted(await ds.keys()) == [
            "_blokrun.ckpt.r1/1/0000000001",
            "a b/c%ü",
            "raw-data-r1",
        ]
        assert await ds.keys("raw-") == ["raw-data-r1"]


async def test_a_whole_run_is_stored_under_the_folders(moto: MotoServer, raw: Any) -> None:
    settings = replace(moto.settings("default"), prefix="workflows/")
    wf = {
        "name": "pub",
        "steps": [
            {"name": "load-data", "node": "echo", "inputs": {"rows": [1]},
             "persistence": {"key": "raw-data-${ctx.request.id}"}},
            {"name": "next", "node": "echo", "inputs": {}},
        ],
    }  # fmt: skip
    async with Runner([settings]) as runner:
        await runner.run(wf, request_id="r1")
        info = await runner.inspect("r1")
        prefix = url_prefix(runner.datasources["default"])
    listed = await names(raw, prefix)
    assert "workflows/raw-data-r1" in listed
    # every object under the folders; the run's lease in the lease namespace, as always
    assert [n for n in listed if not n.startswith(("workflows/", "~lease/workflows/"))] == []
    assert info.status == "completed" and len(info.checkpoints) == 2


async def test_a_bucket_written_before_folders_stays_readable(moto: MotoServer, raw: Any) -> None:
    settings = replace(moto.settings(), prefix="workflows/")
    url = (settings.url or "").split("/", 3)[3]
    old = S3Store(
        BUCKET,
        url,
        endpoint_url=moto.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )  # fmt: skip  (no folders: the old encoding)
    await old.connect()
    await old.save("workflows/raw-data-old", b"kept")
    await old.close()
    assert await names(raw, url + "/") == ["workflows%2Fraw-data-old"]
    async with Datasource(settings, create_store(settings)) as ds:
        assert await ds.load("raw-data-old") == b"kept"
        await ds.save("raw-data-new", b"new")
        assert sorted(await ds.keys()) == ["raw-data-new", "raw-data-old"]
    assert await names(raw, url + "/") == ["workflows%2Fraw-data-new", "workflows%2Fraw-data-old"]


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("team/blok-", "team/blok-raw-data-r1"),  # folders up to the last '/'
        ("a/b c/", "a/b%20c/raw-data-r1"),  # each folder encoded
        ("a//b/", "a%2F%2Fb%2Fraw-data-r1"),  # an empty segment: encoded whole
        ("blok-cache", "blok-cacheraw-data-r1"),  # no '/': as before
    ],
)
async def test_where_the_prefix_puts_an_object(
    moto: MotoServer, raw: Any, prefix: str, name: str
) -> None:
    settings = replace(moto.settings(), prefix=prefix)
    async with Datasource(settings, create_store(settings)) as ds:
        await ds.save("raw-data-r1", b"1")
        assert await names(raw, url_prefix(ds)) == [name]
        assert await ds.keys() == ["raw-data-r1"] and await ds.load("raw-data-r1") == b"1"


async def test_a_neighbours_old_objects_do_not_hold_back_folders(
    moto: MotoServer, raw: Any
) -> None:
    settings = replace(moto.settings(), prefix="team/blok-")
    url = (settings.url or "").split("/", 3)[3]
    old = S3Store(
        BUCKET, url, endpoint_url=moto.endpoint,
        access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
    )  # fmt: skip
    await old.connect()
    await old.save("team/other-x", b"theirs")  # another datasource's, in the old form
    await old.close()
    async with Datasource(settings, create_store(settings)) as ds:
        await ds.save("r1", b"mine")
        assert await ds.keys() == ["r1"]
    assert await names(raw, url + "/") == ["team%2Fother-x", "team/blok-r1"]
