"""A plugin whose import fails, as a plugin with a missing dependency would."""

import pywren_fixture_missing_dependency  # noqa: F401
