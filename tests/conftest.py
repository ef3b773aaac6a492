"""Every test process sees 8 emulated CPU devices, set before JAX is first imported, and Hugging Face
caches in a temporary directory (tests never touch the user's caches or the network)."""

import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports the hub: tests never download
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["GPTJAX_COMPILATION_CACHE"] = "off"  # `gptjax eval` leaves the user's compilation cache alone


@pytest.fixture(scope="session", autouse=True)
def hf_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(root))
        patch.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
        yield root


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A local GCS emulator (tests/gcs_emulator.py) for this test process, with the environment pointing
    every GCS client at it, here and in the subprocesses tests start."""
    from requirements import need_modules

    need_modules("gcp_storage_emulator", "gcsfs", "google.cloud.storage")
    from gcs_emulator import running_emulator

    with running_emulator(tmp_path_factory.mktemp("gcs")) as emulator, pytest.MonkeyPatch.context() as patch:
        for key, value in emulator.env.items():
            patch.setenv(key, value)
        yield emulator
