"""Signed pickles both ways, and no secret in anything that travels or is stored."""

from __future__ import annotations

import json

import pytest

import pywren_core as pw
from pywren_core.errors import SignatureError
from pywren_core.protocol import b64, unb64


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


class TamperFunction:
    """Someone with write access to the bucket swaps the stored function."""

    @pw.hookimpl(wrapper=True)
    def pywren_storage_put(self, session, key, data):
        # A wrapper cannot change the arguments, so it overwrites the object after the real put.
        result = yield
        if key.endswith("func.pickle"):
            from pywren_core.backends import local

            local.pywren_storage_put(session=session, key=key, data=flip_last_byte(data))
        return result


class TamperArguments:
    @pw.hookimpl(wrapper=True)
    def pywren_invoke(self, session, payload):
        for call in payload["calls"]:
            call["args"]["inline"] = b64(flip_last_byte(unb64(call["args"]["inline"])))
        return (yield)


class TamperStatus:
    """Rewrites what the client reads back: the result, or the exception, of every call."""

    def __init__(self, field):
        self.field = field

    @pw.hookimpl(wrapper=True)
    def pywren_storage_get(self, session, key, byte_range):
        data = yield
        if "/status/" in key:
            status = json.loads(data)
            if self.field == "result" and "result" in status:
                status["result"] = b64(flip_last_byte(unb64(status["result"])))
            if self.field == "exception" and "pickle" in status.get("error", {}):
                status["error"]["pickle"] = b64(flip_last_byte(unb64(status["error"]["pickle"])))
            data = json.dumps(status).encode()
        return data


def raise_value_error(x):
    raise ValueError(x)


@pytest.mark.parametrize(
    "wrapper, func, where",
    [
        (TamperFunction(), abs, "func:"),
        (TamperArguments(), abs, "args:"),
        (TamperStatus("result"), abs, "result:"),
        (TamperStatus("exception"), raise_value_error, "exception:"),
    ],
    ids=["function", "arguments", "result", "exception"],
)
def test_tampered_pickles_are_refused(pywren_config, wrapper, func, where):
    ex = pw.executor(pywren_config, wrappers=[wrapper], progress=False, retries=0)
    with pytest.raises(SignatureError, match=rf"{where}.*signature does not match .* refusing to unpickle"):
        ex.call_async(func, -1).result(timeout=60)
    ex.shutdown()


def test_unsigned_object_is_refused():
    from pywren_core.protocol import verify

    with pytest.raises(SignatureError, match="not a signed pywren object"):
        verify(b"k" * 32, "func:x", b"\x80\x05K\x01.")


def test_signature_is_bound_to_the_call():
    from pywren_core.protocol import sign, verify

    blob = sign(b"k" * 32, "result:job/00001", b"value")
    assert verify(b"k" * 32, "result:job/00001", blob) == b"value"
    with pytest.raises(SignatureError):
        verify(b"k" * 32, "result:job/00002", blob)  # replayed as another call's result
    with pytest.raises(SignatureError):
        verify(b"other-secret" * 3, "result:job/00001", blob)


def test_secret_config_values_never_travel_or_get_stored(monkeypatch):
    from pywren_fixture import backend as fixture

    planted = "PLANTED-SECRET-7f3a9c"
    fixture.INVOKED.clear()
    ex = pw.executor(
        {"backend": "fixture", "fixture": {"store": "secrets-test", "token": planted}}, progress=False, cleanup=False
    )
    assert ex.get_result(ex.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    with pytest.raises(ZeroDivisionError):
        ex.call_async(lambda x: 1 / x, 0).result(timeout=60)
    everything = [json.dumps(p) for p in fixture.INVOKED] + [
        v.decode("latin-1") for v in fixture._STORES["secrets-test"].values()
    ]
    assert len(everything) > 10
    assert not [blob for blob in everything if planted in blob]
    assert all("token" not in p["config"] for p in fixture.INVOKED)
    ex.shutdown()


def test_ids_and_secrets_are_unguessable(pywren_config):
    from pywren_fixture import backend as fixture

    fixture.INVOKED.clear()
    executors = [pw.executor({"backend": "fixture"}, progress=False) for _ in range(2)]
    for ex in executors:
        ex.get_result(ex.map(abs, [1]))
        ex.get_result(ex.map(abs, [1]))
    ids = {p["executor_id"] for p in fixture.INVOKED}
    secrets = {p["secret"] for p in fixture.INVOKED}
    assert len(ids) == 2 and all(len(i) == 16 for i in ids)
    assert len(secrets) == 4 and all(len(s) >= 64 for s in secrets)
