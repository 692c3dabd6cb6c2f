import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at test time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers (tiny, toy_executor)

from tiny import data_dir, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    path = data_dir() / "sst2"
    if not (path / "train.tsv").exists():
        pytest.fail(f"SST-2 not found at {path}: put ../shared/data beside the repo or set EDGEZO_DATA")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, sst2_dir) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, sst2_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: save_tiny(root / f"tiny-{arch}", arch) for arch in ("llama", "opt", "roberta")}

from brokers import mosquitto, mosquitto_factory, rabbit_cluster  # noqa: E402,F401
