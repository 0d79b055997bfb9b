"""The examples in the encoder modules' docstrings run (they are the modules' first documentation)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["architecture", "names", "preprocessing", "compat", "builtin", "module", "runtime", "wildcat", "classic", "backbones", "embedding", "spec"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(f"medcbir.encoders.{name}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
