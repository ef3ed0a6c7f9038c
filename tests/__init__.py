"""dlqd's tests.

`tests.support` holds assertions shared by many test files (`assert_unharmed`):
pytest rewrites them as it does a test module's, so their failures show values.
"""

import pytest

pytest.register_assert_rewrite("tests.support")
