"""The image is built by buildah from deploy/docker/Dockerfile and every service starts from it.

No Docker engine runs here and no container registry can be reached, so the one thing this test
cannot use is the base image the Dockerfile pins. It builds a stand-in for it: a Debian root
filesystem made by debootstrap, with Python and pip where the official image has them, pip free
to install as root (no EXTERNALLY-MANAGED marker, as in the official image) and the build host's
CA bundle (the build downloads from PyPI, through whatever TLS proxy the host trusts). Every
other step of the Dockerfile runs as written: the FROM lines are the only ones rewritten, and
the test checks that. buildah keeps its images in a temporary directory (vfs storage, chroot
isolation: no daemon, no user namespaces), and each container runs as the image's USER, in its
WORKDIR, with its environment; chroot isolation shares the host's network, so the test reaches
the ports of `llmscope up` inside the container on 127.0.0.1.

Needs root, buildah and debootstrap (`.ci/system-packages` installs them) and a Debian mirror;
without the tools it skips, saying so. tests/deploy/test_image.py replays the same steps with no
container engine at all and runs everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmscope.stack.cli import SERVICES
from llmscope.stack.ports import free_port
from tests.e2e.stack import wait_for
from tests.scrape import parse, total

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PINNED_BASE = re.compile(r"^FROM (python:3\.12-slim@sha256:[0-9a-f]{64})(?= AS |$)", re.MULTILINE)
STAND_IN = "localhost/llmscope-base-stand-in:test"
IMAGE = "localhost/llmscope:test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What the official python image has that a minimal Debian lacks.
STAND_IN_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"

pytestmark = pytest.mark.timeout(1800)


def _tools() -> tuple[str, str]:
    buildah, debootstrap = shutil.which("buildah"), shutil.which("debootstrap")
    if buildah is None or debootstrap is None or os.geteuid() != 0:
        pytest.skip("building the image needs root, buildah and debootstrap (.ci/system-packages)")
    return buildah, debootstrap


@dataclass(frozen=True)
class Buildah:
    """buildah with its storage in one temporary directory."""

    binary: str
    storage: Path

    def command(self, *args: str) -> list[str]:
        return [
            self.binary,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.storage / "root"),
            "--runroot",
            str(self.storage / "run"),
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done


def _stand_in_base(buildah: Buildah, debootstrap: str, work: Path) -> None:
    rootfs = work / "rootfs"
    minbase = [debootstrap, "--variant=minbase", f"--include={STAND_IN_PACKAGES}"]
    done = subprocess.run(
        [*minbase, SUITE, str(rootfs), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    shutil.copy(Path("/etc/ssl/certs/ca-certificates.crt"), rootfs / "etc/ssl/certs/ca-certificates.crt")
    context = work / "base"
    context.mkdir()
    with tarfile.open(context / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs)
    (context / "Containerfile").write_text(
        "FROM scratch\nADD rootfs.tar /\n"
        # uv reads SSL_CERT_FILE; pip in Debian reads the system bundle itself.
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        " SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n"
    )
    buildah("bud", "--isolation", "chroot", "-t", STAND_IN, str(context), timeout=600)
    shutil.rmtree(context)


def stand_in_dockerfile(text: str) -> str:
    """The Dockerfile with its pinned base replaced by the stand-in, every other line as it is."""
    bases = PINNED_BASE.findall(text)
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms
    assert len(bases) == len(froms), f"every FROM pins python:3.12-slim by digest: {froms}"
    rewritten = PINNED_BASE.sub(f"FROM {STAND_IN}", text)
    changed = [
        (old, new) for old, new in zip(text.splitlines(), rewritten.splitlines(), strict=True) if old != new
    ]
    assert [old for old, _ in changed] == froms
    return rewritten


@dataclass(frozen=True)
class Image:
    """The built image: run its ENTRYPOINT in a container of it."""

    buildah: Buildah
    container: str
    config: dict[str, object]

    def entrypoint(self) -> list[str]:
        entrypoint = self.config["Entrypoint"]
        assert isinstance(entrypoint, list)
        return [str(word) for word in entrypoint]

    def command(self, *args: str, env: dict[str, str] | None = None, volume: str | None = None) -> list[str]:
        options = [f"--env={k}={v}" for k, v in (env or {}).items()]
        if volume:
            options.append(f"--volume={volume}")
        return self.buildah.command("run", "--isolation", "chroot", *options, self.container, "--", *args)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    binary, debootstrap = _tools()
    work = tmp_path_factory.mktemp("image-build")
    buildah = Buildah(binary, work / "storage")
    try:
        _stand_in_base(buildah, debootstrap, work)
        dockerfile = work / "Dockerfile"
        dockerfile.write_text(stand_in_dockerfile(DOCKERFILE.read_text()))
        # The build context is the repository, as in the README's `docker build`; .dockerignore applies.
        buildah(
            "bud", "--isolation", "chroot", "--pull=never", "-f", str(dockerfile), "-t", IMAGE, str(ROOT),
            timeout=1200,
        )  # fmt: skip
        inspected = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
        container = buildah("from", "--pull=never", IMAGE).stdout.strip().splitlines()[-1]
        yield Image(buildah, container, inspected["OCIv1"]["config"])
    finally:
        subprocess.run(buildah.command("rm", "--all"), capture_output=True, timeout=120)
        subprocess.run(buildah.command("rmi", "--all", "--force"), capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


def test_the_image_runs_as_its_numeric_non_root_user(image: Image) -> None:
    assert image.config["User"] == "10001:10001"
    done = image.run("id", "-u")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10001"


def test_the_entrypoint_starts_in_the_image(image: Image) -> None:
    done = image.run(*image.entrypoint(), "--help")
    # A venv built at one path and copied to another fails here: its scripts' first line names
    # an interpreter that is not in the image (exit 127, "no such file or directory").
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llmscope up" in done.stdout


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_starts_in_the_image(image: Image, service: str) -> None:
    # --help imports the service's whole entry module: a dependency missing from the no-dev
    # production environment fails here too.
    args = ["sim", "serve", "--help"] if service == "sim" else [service, "--help"]
    done = image.run(*image.entrypoint(), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"usage: llmscope {' '.join(args[:-1])}")


def test_llmscope_up_runs_the_whole_stack_in_the_image(image: Image, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("api", "nats", "pg", "sim", "prober", "spc-engine", "alerter")}
    env = {
        # The image listens on 0.0.0.0 for Kubernetes; the host's network is shared here.
        "LLMSCOPE_HOST": "127.0.0.1",
        "LLMSCOPE_DATA_DIR": "/tmp/llmscope",
        "LLMSCOPE_PORT": str(ports["api"]),
        "LLMSCOPE_NATS_PORT": str(ports["nats"]),
        "LLMSCOPE_PG_PORT": str(ports["pg"]),
        "LLMSCOPE_SIM_PORT": str(ports["sim"]),
        "LLMSCOPE_PROBER_HEALTH_PORT": str(ports["prober"]),
        "LLMSCOPE_SPC_HEALTH_PORT": str(ports["spc-engine"]),
        "LLMSCOPE_ALERTER_HEALTH_PORT": str(ports["alerter"]),
    }
    control = tmp_path / "control"
    control.mkdir()
    # buildah run does not pass signals on, so a shell in the container stops `up` (SIGTERM, as
    # Kubernetes and compose do) when the test asks for it, and reports how `up` exited.
    script = (
        f"{' '.join(image.entrypoint())} up & pid=$!; "
        'while [ ! -e /control/stop ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done; '
        'kill -TERM "$pid" 2>/dev/null; wait "$pid"; echo "up exited $?"'
    )
    proc = subprocess.Popen(
        image.command("sh", "-c", script, env=env, volume=f"{control}:/control"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        output.extend(proc.stdout)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def log() -> str:
        return "".join(output[-200:])

    def metrics(service: str) -> str:
        try:
            reply = httpx.get(f"http://127.0.0.1:{ports[service]}/metrics", timeout=5)
        except httpx.TransportError:
            return ""
        return reply.text if reply.status_code == 200 else ""

    try:
        # Either the banner, or `up` gave up (the shell reports its exit): no wait past a failure.
        wait_for(
            lambda: any(line.startswith(("  Dashboard", "up exited")) for line in output),
            240,
            what=f"up's banner\n{log()}",
        )
        assert any(line.startswith("  Dashboard") for line in output), log()
        # The prober in the image probed the simulator in the image: the whole path runs.
        wait_for(
            lambda: total(parse(metrics("prober")), "gen_ai_client_operation_duration_seconds_count") > 0,
            120,
            what=f"a probe recorded on the prober's /metrics\n{log()}",
        )
        for service, family in (
            ("api", "llmscope_api_http_requests"),
            ("spc-engine", "llmscope_spc_partitions_held"),
            ("alerter", "llmscope_alerter_notifications"),
        ):
            wait_for(
                lambda s=service, f=family: f"# TYPE {f}" in metrics(s),
                60,
                what=f"{family} on the {service}'s /metrics\n{log()}",
            )
        promtool = shutil.which("promtool")
        for service in ("api", "prober", "spc-engine", "alerter") if promtool else ():
            # What a scrape of the running service reads, not a registry built by the test.
            exposition = metrics(service)
            check = [str(promtool), "check", "metrics"]
            checked = subprocess.run(check, input=exposition, capture_output=True, text=True, timeout=60)
            assert checked.returncode == 0, f"{service}: {checked.stdout}{checked.stderr}"
    finally:
        (control / "stop").touch()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == 0, log()
    assert "up exited 0" in "".join(output), log()
    assert "Traceback" not in "".join(output), log()


def test_only_the_from_lines_are_rewritten_for_the_stand_in() -> None:
    text = DOCKERFILE.read_text()
    rewritten = stand_in_dockerfile(text)
    assert rewritten.count(f"FROM {STAND_IN}") == len(PINNED_BASE.findall(text)) == 2
    # The pattern matches nothing else: an unpinned base is refused.
    with pytest.raises(AssertionError, match="pins python"):
        stand_in_dockerfile(text.replace("@sha256:", "-unpinned:", 1))
