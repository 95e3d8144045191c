"""Test setup: 8 emulated CPU devices, set before JAX is imported anywhere."""

import os

# Tests run tiny models, whose time goes to compiling: XLA's LLVM optimisation level 0
# compiles faster (the suite passes at it as at the default level).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
