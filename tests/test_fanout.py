"""The fan-out settings on a backend that cannot fan out (``local``): what is asked of it is refused
with a message naming the setting, and ``auto`` leaves every invocation to the client. An invoker
run against local storage for a job that is gone writes nothing. Fan-out itself runs in the
plugins' suites (``FanOutConformance``), on the platforms' emulators."""

from __future__ import annotations

import pytest

import pywren_core as pw
from pywren_core import fanout
from pywren_core.errors import ConfigError
from pywren_core.protocol import JobKeys, new_secret, sign
from pywren_core.testing import open_session, square


@pytest.mark.parametrize("setting", ["sometimes", 0, -3, True])
def test_a_bad_fanout_setting_names_itself(pywren_config, setting):
    with pytest.raises(ConfigError, match="fanout must be 'auto', 'off' or a number"):
        pw.executor(pywren_config, fanout=setting)


def test_fanout_on_a_backend_that_cannot_is_refused_up_front(pywren_config):
    with pytest.raises(ConfigError, match="backend 'local' cannot fan out"):
        pw.executor(pywren_config, fanout=1)


def test_auto_and_off_invoke_from_the_client(pywren_config):
    for setting in ("auto", "off"):
        with pw.executor(pywren_config, fanout=setting, progress=False) as ex:
            assert ex._engine.invoker.fanout is None
            assert ex.get_result(ex.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_the_invoker_of_a_job_cleaned_up_invokes_nothing_and_leaves_nothing(pywren_config):
    """The job's batch is still there but its function is gone (cleanup deletes the function
    first): the invoker's start marker is withdrawn, and it neither invokes nor reports."""
    session = open_session(pywren_config)
    invoked = []
    session.invoke = invoked.append
    keys, secret = JobKeys("e0fanout", "j0000"), new_secret()
    batch = fanout.batch_key(keys.prefix, 0)
    session.put(batch, sign(secret, f"fanout:{batch}", b'{"payloads": [{"calls": []}]}'))
    payload = {"executor_id": keys.executor_id, "job_id": keys.job_id, "func_key": keys.func, "fanout": batch}
    try:
        fanout.serve(session, payload, keys.prefix, secret, delivery=None)
        assert invoked == []
        assert session.list(keys.prefix) == [batch]
    finally:
        session.delete(session.list(keys.prefix))
        session.close()
