"""Skip markers for the heavy dependencies, decided without importing them.

`pytest.importorskip("tensorflow")` at the top of a test module imports TensorFlow while pytest
collects (about 9 s of CPU, once per run, even for `pytest --co` or a run of numpy-only tests);
`importlib.util.find_spec` only looks the package up. The tests import TensorFlow themselves, in
module fixtures or inside the test.
"""
from __future__ import annotations

import importlib.util

import pytest

tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
