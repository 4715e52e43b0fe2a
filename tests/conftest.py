"""Test setup: 8 virtual CPU devices, so multi-device code is exercised on one CPU host."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  """The real datasets in ../shared/data (never committed); tests that need them skip elsewhere."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA


def pytest_runtest_setup(item):
  """CI runs the 'slow' tier while time allows: .ci/run exports HSNN_SLOW_DEADLINE (Unix time);
  a slow test that would start after it is skipped, and says so in the report."""
  deadline = os.environ.get("HSNN_SLOW_DEADLINE")
  if deadline and item.get_closest_marker("slow") is not None:
    import time
    if time.time() > float(deadline):
      pytest.skip("CI time budget for the slow tier is spent (HSNN_SLOW_DEADLINE)")
