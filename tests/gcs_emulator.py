"""A local GCS for tests: `gcp-storage-emulator` serving on 127.0.0.1, and the environment that points every
GCS client gptjax uses at it and at nothing else: gcsfs and google-cloud-storage (STORAGE_EMULATOR_HOST),
tensorstore (TENSORSTORE_GCS_HTTP_URL, orbax's arrays and the sweep leases), and no credentials lookup that
could leave the machine (the metadata server pointed at a closed local port, no gcloud config).

The emulator (2026.7.19) lacks two things real GCS has and gptjax relies on, which `python gcs_emulator.py
PORT BUCKET` adds before serving: the `x-goog-generation` header on downloads (tensorstore reads an object's
generation from it; without it orbax's OCDBT manifest cannot be updated: "Malformed StorageGeneration") and
`ifGenerationMatch` preconditions on uploads (412 when the object's generation differs, 0 = must not exist),
which the sweep leases' create-if-absent and replace-if-unchanged are made of."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

BUCKET = "gptjax-test"  # tensorstore wants a valid bucket name (3+ characters)
_CLOSED = "127.0.0.1:9"  # the discard port: nothing listens there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Emulator:
    url: str
    env: dict[str, str]

    def client(self) -> storage.Client:
        return storage.Client(credentials=AnonymousCredentials(), project="gptjax-test")

    def prefix(self) -> str:
        """A fresh gs:// directory for one test."""
        return f"gs://{BUCKET}/{uuid.uuid4().hex[:10]}"

    def objects(self, prefix: str) -> list[str]:
        """Every object name under gs:// URL `prefix`, relative to it."""
        bucket, _, path = prefix.removeprefix("gs://").partition("/")
        names = [b.name for b in self.client().list_blobs(bucket, prefix=path.rstrip("/") + "/")]
        return sorted(n[len(path.rstrip("/")) + 1 :] for n in names)


def environment(url: str, home: Path) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GCE_METADATA_HOST": _CLOSED,
        "GCE_METADATA_ROOT": _CLOSED,
        "GCE_METADATA_IP": _CLOSED,
        "NO_GCE_CHECK": "True",
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "GOOGLE_CLOUD_PROJECT": "gptjax-test",
        "GPTJAX_CACHE_DIR": str(home / "cache"),
    }


@contextlib.contextmanager
def running_emulator(home: Path) -> Iterator[Emulator]:
    """Start the emulator (in memory) with one bucket; stop it afterwards."""
    port = free_port()
    log = open(home / "emulator.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, __file__, str(port), BUCKET], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not start: {(home / 'emulator.log').read_text()}")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        yield Emulator(url, environment(url, home))
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def no_local_gs_dir(*roots: str | os.PathLike[str]) -> list[str]:
    """Paths under `roots` that a gs:// URL turned into a local directory would create (`gs:`)."""
    return [str(p) for root in roots for p in Path(root).rglob("gs:*")]


def _serve(port: int, bucket: str) -> None:
    """The emulator with generations on downloads and generation preconditions on uploads (module docstring)."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download, insert = objects.download, objects.insert

    def generation(storage, bucket_name: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket_name, name)["generation"])
        except NotFound:
            return "0"

    def download_with_generation(request, response, storage, *args, **kwargs):
        current = generation(storage, request.params["bucket_name"], request.params["object_id"])
        if current != "0":
            response["x-goog-generation"] = current
            response["x-goog-metageneration"] = "1"
        return download(request, response, storage, *args, **kwargs)

    def insert_if_generation_matches(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            data = request.data if isinstance(request.data, dict) else {}
            name = request.query["name"][0] if "name" in request.query else data.get("meta", {}).get("name")
            if generation(storage, request.params["bucket_name"], name) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return insert(request, response, storage, *args, **kwargs)

    objects.download, objects.insert = download_with_generation, insert_if_generation_matches
    from gcp_storage_emulator.server import create_server  # its routing table takes the patched handlers

    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
