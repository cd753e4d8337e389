"""Secrets never appear in what blokrun prints (issue 13, class 9): ``mask_url`` whatever
characters a password holds, the ``Redactor`` over text and exception chains, and URLs whose
password cannot be parsed refused up front."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from blokrun.config import DatasourceSettings
from blokrun.errors import ConfigError, DatasourceError
from blokrun.redact import Redactor, mask_url, unencoded_in_password, url_secrets

PASSWORDS = ["Sup3r/Secret", "p@ss#w?rd/x", "a:b:c", "with space", "100%sure", "ünïcødé-pw"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@127.0.0.1:6379/0",
        "redis://user:{pw}@h:1/0?timeout=1",
        "postgresql://bob:{pw}@db.example:5432/app",
        "mongodb://bob:{pw}@a:1,b:2/db?replicaSet=rs",
        "http://k:{pw}@minio:9000",
        "user:{pw}@host",
    ],
)
def test_mask_url_hides_the_password_whatever_it_holds(template: str, password: str) -> None:
    url = template.format(pw=password)
    masked = mask_url(url)
    assert password not in masked and "***" in masked
    assert masked.endswith(template.split("@", 1)[1].format(pw=password))  # the host stays
    assert url_secrets(url) == (password,)


def test_secret_query_parameters_are_masked() -> None:
    url = "redis://h:1/0?password=hunter22&db=1&token=abc.def"
    assert mask_url(url) == "redis://h:1/0?password=***&db=1&token=***"
    assert set(url_secrets(url)) == {"hunter22", "abc.def"}


def test_no_password_no_change() -> None:
    for url in ("redis://h:1/0", "postgresql://bob@h/db", "", "/a/path"):
        assert mask_url(url) == url


@given(
    st.text(
        alphabet=string.ascii_letters + string.digits + "/?#@:%!$&'()*+,;= -._~",
        min_size=4,
        max_size=30,
    )
)
def test_any_password_is_removed_from_any_message(password: str) -> None:
    """Whatever a library does with the URL -- quote it, unquote it, cut it at a delimiter --
    what it prints carries no piece of the password of 4 characters or more."""
    # a "password" that is a piece of the URL's other parts (e.g. "127.") is not secret there
    assume(password not in "redis://user:@127.0.0.1:6379/0")
    url = f"redis://user:{password}@127.0.0.1:6379/0"
    redactor = Redactor.for_urls(url)
    messages = [
        f"cannot connect to {url}",
        f"bad port {password!r}",
        f"auth failed for {quote(password, safe='')}",
        *(f"port {piece!r} is not a number" for piece in password.split("/") if len(piece) >= 4),
    ]
    for message in messages:
        cleaned = redactor.text(message)
        assert password not in cleaned and quote(password, safe="") not in cleaned
        assert "user:" + password not in cleaned
    assert password not in mask_url(url)


def test_an_exception_chain_is_cleaned_in_place() -> None:
    url = "postgresql://bob:Sup3r%2FSecret@h:1/db"
    redactor = Redactor.for_urls(url)
    try:
        try:
            try:
                raise ValueError("invalid literal for int(): 'Sup3r'")
            except ValueError as low:
                raise ConnectionRefusedError(111, f"refused at {url}") from low
        except OSError as mid:
            raise DatasourceError(f"connect failed: {mid} (Sup3r/Secret)") from mid
    except DatasourceError as top:
        top.add_note("while connecting with Sup3r/Secret")
        redactor.exception(top)
        texts: list[str] = []
        seen: BaseException | None = top
        while seen is not None:
            texts += [str(seen), repr(seen), *getattr(seen, "__notes__", [])]
            seen = seen.__cause__ or seen.__context__
    joined = "\n".join(texts)
    for secret in ("Sup3r", "Secret", "Sup3r/Secret", "Sup3r%2FSecret"):
        assert secret not in joined, joined


@pytest.mark.parametrize(
    ("url", "bad"),
    [
        ("redis://:Sup3r/Secret@127.0.0.1:6390/0", "/"),
        ("postgresql://bob:a#b?c@h/db", "#?"),
        ("mongodb://bob:x@y@h/db", "@"),
    ],
)
def test_a_password_a_url_cannot_carry_is_refused_naming_the_variable(url: str, bad: str) -> None:
    assert unencoded_in_password(url) == bad
    with pytest.raises(ConfigError) as info:
        DatasourceSettings(name="cache", type=url.partition(":")[0], url=url)
    assert info.value.variable == "DATASOURCE_CACHE_URL"
    message = str(info.value)
    assert "DATASOURCE_CACHE_URL" in message and "percent-encode" in message
    assert quote(bad[0], safe="") in message
    for secret in url_secrets(url):
        assert secret not in message


def test_an_encoded_password_is_accepted() -> None:
    url = f"redis://:{quote('Sup3r/Secret', safe='')}@h:1/0"
    assert DatasourceSettings(name="cache", type="redis", url=url).url == url


class _Leaky:
    """A driver whose every error quotes its whole configuration (as careless libraries do)."""

    def __init__(self, url: str, exc_type: type[BaseException]) -> None:
        from blokrun.datasources.memory import MemoryStore

        self._inner = MemoryStore()
        self._url = url
        self._exc_type = exc_type

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def connect(self) -> None:
        raise self._exc_type(f"could not reach {self._url} (password {self._url[14:26]})")

    async def load(self, key: str) -> bytes | None:
        try:
            raise KeyError(self._url)
        except KeyError as exc:
            raise DatasourceError(f"read of {key} failed") from exc


@pytest.mark.parametrize("exc_type", [DatasourceError, ConnectionRefusedError, RuntimeError])
async def test_the_datasource_wrapper_cleans_every_error_a_driver_raises(
    exc_type: type[BaseException],
) -> None:
    from typing import cast

    from blokrun.datasources import Datasource, Store

    url = f"redis://bob:{quote('Sup3r/Secret', safe='')}@h:1/0"
    settings = DatasourceSettings(name="leaky", type="redis", url=url)
    ds = Datasource(settings, cast("Store", _Leaky(url, exc_type)))
    with pytest.raises(BaseException) as info:
        await ds.connect()
    with pytest.raises(DatasourceError) as read:
        await ds.load("k")
    for caught in (info.value, read.value):
        seen: BaseException | None = caught
        while seen is not None:
            for text in (str(seen), repr(seen)):
                assert "Sup3r" not in text and "Secret" not in text, text
            seen = seen.__cause__ or seen.__context__
