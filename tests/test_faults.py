"""The fault suite on the local backend, and the faults config itself."""

from __future__ import annotations

import pytest

import pywren_core as pw
from pywren_core.errors import ConfigError
from pywren_core.testing import FaultConformance


class TestLocalFaults(FaultConformance):
    pass


def test_unknown_fault_is_a_config_error(pywren_config):
    with pytest.raises(ConfigError, match="faults has no setting 'drop_invocation'"):
        pw.executor(pywren_config, faults={"drop_invocation": 0.1})
    with pytest.raises(ConfigError, match="must be a fraction between 0 and 1"):
        pw.executor(pywren_config, faults={"storage_errors": 2})


def test_faults_are_off_by_default(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    assert ex.faults is None
    ex.shutdown()
