"""Signed pickles both ways, and no secret in anything that travels or is stored."""

from __future__ import annotations

import json
import time

import pytest

import pywren_core as pw
from pywren_core.errors import CallTimeoutError, SignatureError
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
    """Flips a byte of every status record the client reads back."""

    @pw.hookimpl(wrapper=True)
    def pywren_storage_get(self, session, key, byte_range):
        data = yield
        return flip_last_byte(data) if "/status/" in key else data


class TamperResultObject:
    """Flips a byte of a large result, which travels as an object of its own."""

    @pw.hookimpl(wrapper=True)
    def pywren_storage_get(self, session, key, byte_range):
        data = yield
        return flip_last_byte(data) if "/result/" in key else data


def big(x):
    return b"x" * 200_000


def raise_value_error(x):
    raise ValueError(x)


@pytest.mark.parametrize(
    "wrapper, func, where",
    [
        (TamperFunction(), abs, "func:"),
        (TamperArguments(), abs, "args:"),
        (TamperResultObject(), big, "result:"),
    ],
    ids=["function", "arguments", "large result"],
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
    assert len(ids) == 2 and all(len(i) == 20 for i in ids)
    assert len(secrets) == 4 and all(len(s) >= 64 for s in secrets)


def test_a_tampered_status_is_never_used(pywren_config):
    """Not even its result: the call is lost (and would be retried), never wrong."""
    ex = pw.executor(pywren_config, wrappers=[TamperStatus()], progress=False, retries=0, timeout=1, lost_grace=1)
    with pytest.raises(CallTimeoutError, match="no worker reported"):
        ex.call_async(abs, -1).result(timeout=30)
    ex.shutdown()


def sleep_then_double(x):
    time.sleep(1.0)
    return 2 * x


def test_forged_statuses_change_nothing(pywren_config):
    """Someone with write access to storage writes `died` and `exception` statuses for a running
    call: unsigned, signed with another secret, and for a later attempt. The call still runs once
    and returns its own result."""
    from pywren_core.protocol import JobKeys, dump_status, new_secret

    ex = pw.executor(pywren_config, progress=False, retries=2)
    future = ex.call_async(sleep_then_double, 21)
    keys = JobKeys(future.executor_id, future.job_id)
    died = {"protocol": 1, "call_id": future.call_id, "attempt": 0, "kind": "died",
            "error": {"type": "WorkerDiedError", "message": "forged", "traceback": ""}}
    raised = {**died, "kind": "exception", "error": {"type": "ValueError", "message": "forged", "traceback": "fake"}}
    ex.session.put(keys.status(future.call_id, 0), json.dumps(died).encode())
    time.sleep(0.3)
    ex.session.put(keys.status(future.call_id, 0), dump_status(new_secret(), keys, raised))
    ex.session.put(keys.status(future.call_id, 1), dump_status(new_secret(), keys, {**died, "attempt": 1}))
    assert future.result(timeout=30) == 42
    assert future.stats["attempts"] == 1 and future.stats["runs"] == 1
    ex.shutdown()


def count_runs(path):
    with open(path, "a") as f:
        f.write("x")
    return "ran"


def test_a_warm_worker_never_runs_a_cached_function_for_another_secret(pywren_config, tmp_path):
    """An attacker who can invoke (or write to a queue) reuses a job's func_key with their own
    secret and arguments; the worker that cached that function refuses."""
    from pywren_core.protocol import JobKeys, args_context, b64, load_status, new_secret, sign
    from pywren_core.serialize import dumps

    marker = tmp_path / "runs"
    ex = pw.executor(pywren_config, progress=False, cleanup=False, local={"workers": 1})
    first = ex.call_async(count_runs, str(marker))
    assert first.result(timeout=30) == "ran"
    forged_secret = new_secret()
    keys = JobKeys(first.executor_id, first.job_id)
    config = {"storage_dir": pywren_config["local"]["storage_dir"], "workers": 1}
    payload = {
        "protocol": 1, "backend": "local", "config": config,
        "executor_id": keys.executor_id, "job_id": keys.job_id, "func_key": keys.func, "secret": forged_secret.hex(),
        "timeout": 10, "python": first_python(), "core_version": pw.__version__, "result_inline_max": 65536,
        "calls": [{"call_id": "00001", "attempt": 0, "args": {
            "inline": b64(sign(forged_secret, args_context(keys, "00001"), dumps(((str(marker),), {}))))}}],
    }
    ex.session.invoke(payload)
    status_key = keys.status("00001", 0)
    deadline = time.monotonic() + 20
    while not ex.session.list(status_key) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = load_status(forged_secret, keys, "00001", 0, ex.session.get(status_key))  # the forger's to read
    assert status["kind"] == "refused" and "func:" in status["error"]["message"]
    assert marker.read_text() == "x", "the cached function ran for the forged payload"
    ex.clean()
    ex.shutdown()


def first_python():
    from pywren_core.protocol import python_version

    return python_version()


def test_sealed_secrets_never_travel_or_rest_in_the_clear(monkeypatch):
    """With a payload key, payloads carry the job secret sealed, and a worker holding the key
    refuses a payload whose secret is in the clear (written by someone without the key)."""
    import secrets as stdlib_secrets

    from pywren_fixture import backend as fixture

    from pywren_core import worker
    from pywren_core.protocol import PAYLOAD_KEY_ENV, JobKeys

    key = stdlib_secrets.token_hex(32)
    monkeypatch.setenv(PAYLOAD_KEY_ENV, key)
    worker._payload_key.cache_clear()
    try:
        fixture.INVOKED.clear()
        config = {"backend": "fixture", "fixture": {"store": "sealed", "payload_key": key}}
        ex = pw.executor(config, progress=False, cleanup=False)
        assert ex.get_result(ex.map(lambda x: x + 1, range(4))) == [1, 2, 3, 4]
        assert fixture.INVOKED and all("secret" not in p and "sealed_secret" in p for p in fixture.INVOKED)
        # The manifest keeps the secret on the client's own disk, and nowhere else.
        secrets_used = {json.loads(open(path).read())["secret"] for path in _manifests()}
        stored = b"".join(fixture._STORES["sealed"].values())
        assert secrets_used and not any(bytes.fromhex(s) in stored or s.encode() in stored for s in secrets_used)
        assert not any(s in json.dumps(p) for p in fixture.INVOKED for s in secrets_used)
        clear = {**fixture.INVOKED[0], "secret": next(iter(secrets_used))}
        del clear["sealed_secret"]
        before = dict(fixture._STORES["sealed"])
        assert worker.handle(clear, isolate_cwd=False) == []
        assert fixture._STORES["sealed"] == before, "a payload with a clear secret wrote something"
        # A sealed payload copied from the queue and sent again: its calls were answered, so nothing runs.
        assert worker.handle(fixture.INVOKED[0], isolate_cwd=False) == []
        assert fixture._STORES["sealed"] == before, "a replayed payload ran again"
        # A status only counts if the job signed it: a forged one does not stop the call running.
        replayed = fixture.INVOKED[0]
        call = replayed["calls"][0]
        key = JobKeys.from_payload(replayed).status(call["call_id"], call["attempt"])
        fixture._STORES["sealed"][key] = b'{"kind": "success", "forged": true}'
        assert [s["kind"] for s in worker.handle(replayed, isolate_cwd=False)] == ["success"]
        assert fixture._STORES["sealed"][key] != b'{"kind": "success", "forged": true}'
        ex.clean()
        ex.shutdown()
    finally:
        worker._payload_key.cache_clear()


def _manifests():
    from pywren_core.manifests import manifest_dir

    return list(manifest_dir().glob("*/*.json"))


def test_sealing_is_bound_to_key_and_job():
    from pywren_core.protocol import seal, unseal

    secret = bytes(range(32))
    sealed = seal(b"k" * 32, secret, "secret:job-a/")
    assert unseal(b"k" * 32, sealed, "secret:job-a/") == secret
    with pytest.raises(SignatureError):
        unseal(b"k" * 32, sealed, "secret:job-b/")
    with pytest.raises(SignatureError):
        unseal(b"x" * 32, sealed, "secret:job-a/")
