"""Test setup: 8 emulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the whole run, shared by the subprocesses the
# trainer tests start: the same tiny train steps are compiled by many tests and processes.
# Fresh per pytest run (a stale cache can't hide a compile error); MARS_TEST_JAX_CACHE=0 turns
# it off.
if (
    os.environ.get("MARS_TEST_JAX_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ
):
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mars_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
