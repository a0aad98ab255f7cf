"""The fan-out settings on a backend that cannot fan out (``local``): what is asked of it is refused
with a message naming the setting, and ``auto`` leaves every invocation to the client. Fan-out
itself runs in the plugins' suites (``FanOutConformance``), on the platforms' emulators."""

from __future__ import annotations

import pytest

import pywren_core as pw
from pywren_core.errors import ConfigError
from pywren_core.testing import square


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
