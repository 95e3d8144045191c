"""Test setup: 8 emulated CPU devices, set before JAX is imported anywhere; the longest
modules scheduled first and the multi-process one last."""

import os

# Tests run tiny models, whose time goes to compiling: XLA's LLVM optimisation level 0
# compiles faster (the suite passes at it as at the default level).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A jitted function that closes over model params compiles them in as constants (the tiny
# model's 39 MB embedding doubled a compile's time): warn from 8 MB, and pyproject.toml's
# filterwarnings makes the warning an error, so params are passed as arguments.
os.environ.setdefault("JAX_CAPTURED_CONSTANTS_WARN_BYTES", str(8 * 2**20))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# With `-n 2 --dist=loadfile` a module runs whole on one worker, in collection order. A long
# module collected last leaves the other worker idle at the end, so the longest in-process
# modules go first (the `--durations` of the CI log). The multi-process module goes last: its
# three training processes slow whatever runs beside them (XLA's thread pools spin on an
# oversubscribed CPU), and at the end little does. Every other module keeps its place.
FIRST = (
    "test_train_loop.py",
    "test_model_loss.py",
    "test_stage3_demo.py",
    "test_demo_lm.py",
    "test_pinned_sampling.py",
    "test_train_step.py",
)
LAST = ("test_multihost.py",)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i - len(FIRST) for i, name in enumerate(FIRST)} | {name: 1 for name in LAST}
    items.sort(key=lambda item: rank.get(item.path.name, 0))  # stable: keeps the rest in order
