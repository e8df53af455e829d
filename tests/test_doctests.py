"""The examples in the stdlib-only modules' docstrings run and hold."""

import doctest

import pytest

from withcache import cachehost, client, keys, record


@pytest.mark.parametrize("module", [keys, cachehost, record, client])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
