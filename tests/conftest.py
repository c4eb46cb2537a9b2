from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_toy_checkpoint(path: Path, model, spec: dict) -> Path:
    """``model``'s weights as a checkpoint of the three-class toy data set (classes a, b, c), its builder
    arguments ``spec`` (``name`` and keywords) as the run's model section: what Predictor and export load."""
    from pixelwise.models.weights import save_checkpoint

    meta = {
        "model": spec,
        "classes": ["a", "b", "c"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "ignore_index": 255,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "dataset": "toy",
    }
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def real_data_root() -> Path:
    """$PIXELWISE_DATA if set, else ../shared/datasets beside the repository (as in CI)."""
    env = os.environ.get("PIXELWISE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    needed = [root / "isbi2012_membrane" / "classes.json", root / "camvid" / "classes.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"real data sets not found ({', '.join(missing)}); set PIXELWISE_DATA to the datasets folder")
    return root


def write_dataset(
    root: Path,
    name: str = "toy",
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 20),
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """A tiny data set in the native format: RGB PNG images, index PNG masks."""
    rng = np.random.default_rng(seed)
    base = root / name
    base.mkdir(parents=True, exist_ok=True)
    palette = [[i * 80 % 256, 255 - i * 60 % 256, i * 30 % 256] for i in range(num_classes)]
    (base / "classes.json").write_text(
        json.dumps({"classes": [f"c{i}" for i in range(num_classes)], "palette": palette, "ignore_index": 255})
    )
    w, h = size
    for split, count in (splits or {"train": 4, "val": 2}).items():
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mask = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
            image = (mask[..., None] * 60 + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
            Image.fromarray(image).save(base / "images" / split / f"s{i:02d}.png")
            Image.fromarray(mask, mode="L").save(base / "masks" / split / f"s{i:02d}.png")
    return base


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    write_dataset(tmp_path)
    return tmp_path


def _gloo_worker(rank: int, world: int, store: str, fn, queue) -> None:
    import traceback

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        queue.put((rank, fn(rank)))
    except BaseException:
        queue.put((rank, RuntimeError(f"process {rank} failed:\n{traceback.format_exc()}")))
        raise
    finally:
        dist.destroy_process_group()


def run_in_processes(fn, world: int = 2) -> dict[int, object]:
    """Run ``fn(rank)`` in ``world`` spawned processes joined in a gloo group; ``{rank: result}``.
    ``fn`` must be a module-level function (it is pickled). The group meets through a file store (no port to
    race for); a process's error is raised here with its traceback, and no process outlives the call."""
    import tempfile

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        procs = [ctx.Process(target=_gloo_worker, args=(r, world, store, fn, queue)) for r in range(world)]
        for p in procs:
            p.start()
        try:
            results = dict(queue.get(timeout=180) for _ in procs)
            for p in procs:
                p.join(60)
                assert p.exitcode == 0, f"a process exited with {p.exitcode}"
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(10)
    failed = [r for r in results.values() if isinstance(r, RuntimeError)]
    if failed:
        raise failed[0]
    return results


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """What a test's ``train()`` sets for the whole process (deterministic algorithms, cuDNN benchmarking, the
    global RNG, the thread count) is put back, so that no test's outcome depends on the tests before it."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, rng, threads = torch.backends.cudnn.benchmark, torch.get_rng_state(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    torch.set_rng_state(rng)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class FakeClock:
    """The ``time`` module with a ``perf_counter`` that reads ``now``, which only the test moves: put in place of a
    module's ``time`` (``monkeypatch.setattr(trainer, "time", clock)``), its timings are exact whatever the load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __getattr__(self, name: str):
        return getattr(time, name)

    def perf_counter(self) -> float:
        return self.now
