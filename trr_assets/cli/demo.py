"""``trr-assets demo``: the whole tool on a throwaway PostgreSQL and a local S3.

Starts PostgreSQL (``pgserver``, in a temporary data directory) and moto's S3
server (on a free loopback port), writes a config file pointing at them,
migrates, creates three shows, uploads sample assets, and plants one drift of
each kind a reconcile reports:

- an object whose key names no show (unattributable: sync skips it, reconcile
  reports it as an orphaned object that no show can claim);
- after the first sync, an object uploaded behind trr-assets' back (orphaned
  object), an object deleted from S3 by hand (orphaned row), and an object
  overwritten with other bytes (mismatch).

It then runs ``sync`` and ``reconcile --dry-run`` through the real command
line, prints a presigned URL made by the library and fetches it over HTTP.
Everything is removed afterwards, on Ctrl-C and SIGTERM too; ``--keep``
leaves the servers up and prints how to point the CLI at them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from trr_assets.errors import TrrAssetsError
from trr_assets.storage import S3Client

Command = Callable[[Sequence[str]], int]

DEMO_BUCKET = "trr-demo-assets"
# Fake credentials: moto accepts any; they only have to exist for boto3 to sign.
DEMO_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIADEMODEMODEMODEMO",
    "AWS_SECRET_ACCESS_KEY": "demo-secret-access-key-not-a-real-one",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class Sample:
    show: int  # index into SHOWS
    path: str  # below shows/{show_id}/
    content_type: str
    body: bytes


SHOWS = ("Below Deck: Demo Harbor", "The Demo Housewives", "Vanderpump Demo")


def _bytes(tag: str, size: int) -> bytes:
    seed = f"trr-assets demo {tag} ".encode()
    return (seed * (size // len(seed) + 1))[:size]


SAMPLES = (
    Sample(0, "posters/key-art.jpg", "image/jpeg", _bytes("key art", 2048)),
    Sample(0, "episodes/s01e01/still-01.jpg", "image/jpeg", _bytes("still", 1536)),
    Sample(0, "trailer.mp4", "video/mp4", _bytes("trailer", 4096)),
    Sample(1, "posters/key-art.jpg", "image/jpeg", _bytes("key art 2", 2048)),
    Sample(1, "stills/cast-01.jpg", "image/jpeg", _bytes("cast 1", 1024)),
    Sample(1, "stills/cast-02.jpg", "image/jpeg", _bytes("cast 2", 1024)),
    Sample(2, "logo.png", "image/png", _bytes("logo", 512)),
)


def run(command: Command, *, keep: bool = False, debug: bool = False) -> int:
    """Run the demo; 0 when every step worked (Ctrl-C ends ``--keep`` normally).

    ``command`` runs one ``trr-assets`` command line and returns its exit
    code (the CLI's ``main``, handed in so that this module does not import it).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError as exc:
        raise TrrAssetsError(
            f"demo: needs the demo extras ({exc.name} is missing): pip install 'trr-assets[demo]'"
        ) from exc
    started = time.monotonic()
    with ExitStack() as cleanup, _signals_as_interrupt():
        workdir = Path(tempfile.mkdtemp(prefix="trr-assets-demo-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(_say, "cleaned up: PostgreSQL and the local S3 stopped, their data deleted")
        _say("trr-assets demo: a throwaway PostgreSQL and a local S3; nothing else is touched")

        database_url = _start_postgres(workdir, cleanup)
        endpoint = _start_s3(cleanup)
        config = _write_config(workdir, database_url, endpoint)
        cleanup.enter_context(_demo_environment(config, quiet=not debug))
        demo = _Demo(config, command, debug=debug)
        demo.walk_through()
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s")
        if keep:
            _keep_running(config)
    return 0


# --- servers --------------------------------------------------------------------------


def _start_postgres(workdir: Path, cleanup: ExitStack) -> str:
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        import pgserver

    t = time.monotonic()
    _step("starting PostgreSQL (pgserver) in a temporary directory")
    pgdata = workdir / "pgdata"
    # Registered first, so it runs after server.cleanup: a Ctrl-C during the
    # start can leave a server that pgserver has not handed over yet.
    cleanup.callback(_stop_leftover_postgres, pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    cleanup.callback(server.cleanup)
    url = server.get_uri()
    _say(f"  {url} ({time.monotonic() - t:.1f} s)")
    return url


def _stop_leftover_postgres(pgdata: Path, timeout: float = 15.0) -> None:
    """Fast-shut-down the postmaster named in ``pgdata/postmaster.pid``, if any."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        return


def _start_s3(cleanup: ExitStack) -> str:
    from moto.server import ThreadedMotoServer

    # werkzeug, under moto, would print every request to stderr.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _step("starting a local S3 endpoint (moto server)")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    cleanup.callback(server.stop)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    _say(f"  {endpoint}")
    return endpoint


def _write_config(workdir: Path, database_url: str, endpoint: str) -> Path:
    path = workdir / "config.toml"
    path.write_text(
        "# written by trr-assets demo\n"
        "[database]\n"
        f"url = {_toml_string(database_url)}\n\n"
        "[s3]\n"
        f"endpoint_url = {_toml_string(endpoint)}\n"
        f"buckets = [{_toml_string(DEMO_BUCKET)}]\n"
        'addressing_style = "path"\n\n'
        "[reconcile]\n"
        "grace_seconds = 0  # the demo's drift is seconds old\n",
        encoding="utf-8",
    )
    return path


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def _demo_environment(config: Path, *, quiet: bool) -> Iterator[None]:
    """This process sees only the demo's settings (restored afterwards)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("TRR_ASSETS_", "AWS_", "PG")) or name == "DATABASE_URL":
            del os.environ[name]
    os.environ.update(DEMO_AWS_ENV)
    # Hermetic: no profile, endpoint or region from the machine's ~/.aws.
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["TRR_ASSETS_CONFIG"] = str(config)
    if quiet:
        os.environ["TRR_ASSETS_LOGGING_LEVEL"] = "warning"  # the demo's output is the show
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _signals_as_interrupt() -> AbstractContextManager[None]:
    """SIGTERM and SIGINT unwind as KeyboardInterrupt, so the cleanup runs.

    SIGINT too, since a shell that starts the demo in the background has it
    ignored, and Ctrl-C (or ``kill -INT``) must still end ``--keep``.
    """
    from trr_assets.worker import handling_signals

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    return handling_signals(interrupt)


def _keep_running(config: Path) -> None:
    exports = " ".join(f"{k}={v}" for k, v in DEMO_AWS_ENV.items())
    _say(
        "\nThe servers keep running. In another shell:\n\n"
        f"  export TRR_ASSETS_CONFIG={config}\n"
        f"  export {exports}\n"
        "  trr-assets reconcile --dry-run\n"
        "  trr-assets worker\n\n"
        "Press Ctrl-C here to stop them and delete everything."
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("")


# --- the walk-through ------------------------------------------------------------------


class _Demo:
    def __init__(self, config: Path, command: Command, *, debug: bool) -> None:
        from trr_assets.config import load_settings

        self.settings = load_settings(config)
        self.debug = debug
        self.command = command
        self.show_ids: list[uuid.UUID] = []
        self.unattributable = ""
        self._s3: S3Client | None = None

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            from trr_assets import storage

            self._s3 = storage.make_client(self.settings.s3)
        return self._s3

    def key(self, show: int, path: str) -> str:
        return f"shows/{self.show_ids[show]}/{path}"

    def walk_through(self) -> None:
        self.cli("migrate")
        self.create_shows_and_upload()
        self.cli("sync")
        self.plant_drift()
        self.cli("reconcile", "--dry-run")
        _say("\n  The four planted drifts: two orphaned objects (one under a show id no show has),"
             "\n  an orphaned row and a mismatch. `trr-assets reconcile --repair` acts on them as"
             "\n  the reconcile.* policies say; a dry run, the default, touches nothing.")
        self.presign_and_fetch()

    def cli(self, *args: str) -> None:
        _step("$ trr-assets " + " ".join(args))
        code = self.command([*(["--debug"] if self.debug else []), *args])
        if code == 130:  # the command saw the Ctrl-C (and said so): unwind the demo too
            raise KeyboardInterrupt
        if code != 0:
            raise TrrAssetsError(f"demo: `trr-assets {' '.join(args)}` exited {code}")

    def put(self, key: str, body: bytes, content_type: str) -> None:
        from trr_assets import storage

        storage.put_object(self.s3, DEMO_BUCKET, key, body, content_type=content_type)

    def create_shows_and_upload(self) -> None:
        from trr_assets import db, storage

        _step(f"creating {len(SHOWS)} shows and uploading {len(SAMPLES)} sample assets")
        with db.connect(self.settings.database, autocommit=True) as conn, db.wrap_errors("demo: create shows"):
            for title in SHOWS:
                row = conn.execute(db.query("demo_create_show"), {"title": title}).fetchone()
                assert row is not None
                self.show_ids.append(row[0])
                _say(f"  show {row[0]}  {title}")
        storage.create_bucket(self.s3, DEMO_BUCKET)
        for sample in SAMPLES:
            self.put(self.key(sample.show, sample.path), sample.body, sample.content_type)
        stray = f"shows/{uuid.uuid4()}/posters/key-art.jpg"
        self.put(stray, _bytes("stray", 700), "image/jpeg")
        self.unattributable = stray
        _say(f"  s3://{DEMO_BUCKET}/shows/... : {len(SAMPLES)} assets")
        _say(f"  unattributable: {stray} (no show has that id: sync skips it)")

    def plant_drift(self) -> None:
        from trr_assets import storage

        _step("planting drift behind trr-assets' back")
        orphan = self.key(0, "posters/alternate-key-art.jpg")
        self.put(orphan, _bytes("alternate", 1800), "image/jpeg")
        _say(f"  orphaned object: {orphan} (uploaded straight to S3, no row)")
        gone = self.key(1, "stills/cast-02.jpg")
        storage.delete_object(self.s3, DEMO_BUCKET, gone)
        _say(f"  orphaned row:    {gone} (its object deleted from S3 by hand)")
        changed = self.key(0, "trailer.mp4")
        self.put(changed, _bytes("re-cut trailer", 5120), "video/mp4")
        _say(f"  mismatch:        {changed} (overwritten with other bytes)")
        _say(f"  unattributable:  {self.unattributable} (uploaded before the sync)")

    def presign_and_fetch(self) -> None:
        from trr_assets import db
        from trr_assets.presign import Presigner

        sample = SAMPLES[-1]
        key = self.key(sample.show, sample.path)
        with db.connect(self.settings.database, autocommit=True) as conn, db.wrap_errors("demo: find an asset"):
            row = conn.execute(db.query("demo_asset_id"), {"bucket": DEMO_BUCKET, "key": key}).fetchone()
        if row is None:
            raise TrrAssetsError(f"demo: sync left no row for {key}")
        asset_id = row[0]
        _step("a presigned URL, from the library web servers import")
        _say("  >>> from trr_assets.presign import Presigner")
        _say(f"  >>> Presigner(settings=settings).get_url({str(asset_id)!r})")
        url = Presigner(settings=self.settings).get_url(asset_id)
        _say(f"  {url}")
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (a loopback URL we made)
            status, body = response.status, response.read()
        same = "identical to the upload" if body == sample.body else "DIFFERENT from the upload"
        _say(f"  GET -> HTTP {status}, {len(body)} bytes, {same}")
        if status != 200 or body != sample.body:
            raise TrrAssetsError("demo: the presigned URL did not return the uploaded bytes")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _step(text: str) -> None:
    _say(f"\n== {text}")
