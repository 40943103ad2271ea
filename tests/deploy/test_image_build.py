"""The image is built by buildah from deploy/docker/Dockerfile and every service starts from it.

No Docker engine runs here and no container registry can be reached, so the one thing this test
cannot use is the base image the Dockerfile pins. It builds a stand-in for it, with the Python
the pinned base has: a Debian root filesystem made by debootstrap, and under /usr/local (where
the official image builds its CPython) a CPython of the base's version taken from the build host
(pyenv's, built from source as the official image's is), its standard library without tests,
tkinter and site-packages, then pip from its own ensurepip; the Debian packages are those of the
libraries its extension modules link to (found by ldd and dpkg), plus ca-certificates, netbase
and tzdata as in the slim image, and the build host's CA bundle (the build downloads from PyPI,
through whatever TLS proxy the host trusts). Every other step of the Dockerfile runs as written:
the FROM lines are the only ones rewritten, and the test checks that, and that the image and its
venv run the Python version the pinned base names. buildah keeps its images in a temporary
directory (vfs storage, chroot isolation: no daemon, no user namespaces), and each container
runs as the image's USER, in its WORKDIR, with its environment; chroot isolation shares the
host's network, so the test reaches the ports of `llmscope up` inside the container on
127.0.0.1.

Needs root, buildah, debootstrap (`.ci/system-packages` installs them), a Debian mirror and a
CPython of the base's version installed in a prefix of its own (PATH or ~/.pyenv); without them
it skips, saying so. tests/deploy/test_image.py replays the same steps with no container engine
at all and runs everywhere.
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
from llmscope.stack.ports import free_ports
from tests.e2e.stack import wait_for
from tests.scrape import parse, total

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SYSTEM_PACKAGES = ROOT / ".ci" / "system-packages"
PINNED_BASE = re.compile(r"^FROM (python:(\d+\.\d+)-slim@sha256:[0-9a-f]{64})(?= AS |$)", re.MULTILINE)
STAND_IN = "localhost/llmscope-base-stand-in:test"
IMAGE = "localhost/llmscope:test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The host's: the borrowed CPython was built against its libraries.
SUITE = "bookworm"
# What the official slim image installs beside the libraries its CPython links to.
STAND_IN_PACKAGES = ("ca-certificates", "netbase", "tzdata")
# Not in the stand-in's /usr/local: what the official slim image lacks or nothing here uses.
NOT_COPIED = (
    "site-packages",
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "__pycache__",
    "_tkinter*",
)

pytestmark = pytest.mark.timeout(1800)


def _tools() -> tuple[str, str]:
    buildah, debootstrap = shutil.which("buildah"), shutil.which("debootstrap")
    if buildah is None or debootstrap is None or os.geteuid() != 0:
        pytest.skip("building the image needs root, buildah and debootstrap (.ci/system-packages)")
    _assert_pinned_buildah(buildah)
    return buildah, debootstrap


def pinned_buildah() -> str:
    """The Debian version of buildah that .ci/system-packages pins (e.g. 1.28.2+ds1-3+deb12u1+b3)."""
    (version,) = re.findall(r'"buildah buildah=(\S+)"', SYSTEM_PACKAGES.read_text())
    return str(version)


def _assert_pinned_buildah(binary: str, pinned: str | None = None) -> None:
    pinned = pinned or pinned_buildah()
    # The upstream part of the Debian version (before +ds / -revision) is what `--version` shows.
    upstream = re.split(r"[+~-]", pinned, maxsplit=1)[0]
    shown = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert re.match(rf"buildah version {re.escape(upstream)} ", shown), (
        f"the image is built by the pinned buildah {pinned} (.ci/system-packages), this one says: {shown}"
    )


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


def base_python(dockerfile: str) -> str:
    """The Python version (major.minor) of the base image every FROM line pins."""
    versions: set[str] = {version for _, version in PINNED_BASE.findall(dockerfile)}
    assert len(versions) == 1, f"one Python version in every FROM line: {versions}"
    return versions.pop()


def host_python(version: str) -> Path:
    """The prefix of a CPython of this version installed on its own (as /usr/local is in the image)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = [
        shutil.which(f"python{version}"),
        *map(str, sorted(pyenv.glob(f"versions/{version}.*/bin/python{version}"))),
    ]
    for candidate in filter(None, found):
        done = subprocess.run(
            [candidate, "-c", "import sys; print(sys.base_prefix); print(*sys.version_info[:2], sep='.')"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        prefix, _, actual = done.stdout.strip().partition("\n")
        # Debian's /usr Python is spread over the system's directories: not one that moves.
        if done.returncode == 0 and actual == version and prefix not in ("/usr", "/"):
            return Path(prefix)
    pytest.skip(f"the stand-in base needs a CPython {version} in a prefix of its own (PATH or pyenv)")


def _linked_packages(prefix: Path, version: str) -> list[str]:
    """The Debian packages of the libraries this CPython links to (tkinter's are not copied)."""
    dynload = prefix / "lib" / f"python{version}" / "lib-dynload"
    linked = [
        prefix / "bin" / f"python{version}",
        *(prefix / "lib").glob("libpython3*.so*"),
        *(module for module in dynload.glob("*.so") if not module.name.startswith("_tkinter")),
    ]
    libraries: set[str] = set()
    for binary in linked:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60)
        libraries.update(re.findall(r"=> (/\S+) \(", done.stdout))
    packages: set[str] = set()
    for library in sorted(libraries):
        if library.startswith(str(prefix)):
            continue
        real = os.path.realpath(library)
        # usrmerge: dpkg knows a library by one of its two paths.
        for path in (library, real, re.sub(r"^/lib", "/usr/lib", real), re.sub(r"^/usr/lib", "/lib", real)):
            done = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                packages.add(done.stdout.split(":", 1)[0])
                break
        else:
            raise AssertionError(f"no Debian package has {library}, which CPython {version} links to")
    return sorted(packages)


def _install_python(prefix: Path, version: str, rootfs: Path) -> None:
    """Copy the CPython under the root's /usr/local, where the official image builds its own."""
    local = rootfs / "usr" / "local"
    (local / "bin").mkdir(parents=True, exist_ok=True)
    (local / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy2(prefix / "bin" / f"python{version}", local / "bin" / f"python{version}")
    for name in ("python3", "python"):
        (local / "bin" / name).symlink_to(f"python{version}")
    for library in (prefix / "lib").glob("libpython3*.so*"):
        shutil.copy2(library, local / "lib" / library.name, follow_symlinks=False)
    shutil.copytree(
        prefix / "lib" / f"python{version}",
        local / "lib" / f"python{version}",
        symlinks=True,
        ignore=shutil.ignore_patterns(*NOT_COPIED, "config-*"),
    )
    (local / "lib" / f"python{version}" / "site-packages").mkdir()
    shutil.copytree(prefix / "include", local / "include", symlinks=True, dirs_exist_ok=True)


def _stand_in_base(buildah: Buildah, debootstrap: str, work: Path, version: str) -> None:
    prefix = host_python(version)
    rootfs = work / "rootfs"
    include = ",".join((*STAND_IN_PACKAGES, *_linked_packages(prefix, version)))
    done = subprocess.run(
        [debootstrap, "--variant=minbase", f"--include={include}", SUITE, str(rootfs), DEBIAN_MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _install_python(prefix, version, rootfs)
    shutil.copy(Path("/etc/ssl/certs/ca-certificates.crt"), rootfs / "etc/ssl/certs/ca-certificates.crt")
    context = work / "base"
    context.mkdir()
    with tarfile.open(context / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs)
    (context / "Containerfile").write_text(
        "FROM scratch\nADD rootfs.tar /\n"
        # uv reads SSL_CERT_FILE and pip PIP_CERT (its own bundle does not know the host's proxy).
        "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"
        " SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n"
        # The official image runs ldconfig after installing into /usr/local, and has pip as `pip`.
        "RUN ldconfig && python -m ensurepip --default-pip && python -m pip --version\n"
    )
    buildah("bud", "--isolation", "chroot", "-t", STAND_IN, str(context), timeout=600)
    shutil.rmtree(context)


def stand_in_dockerfile(text: str) -> str:
    """The Dockerfile with its pinned base replaced by the stand-in, every other line as it is."""
    bases = PINNED_BASE.findall(text)
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms
    assert len(bases) == len(froms), f"every FROM pins python:X.Y-slim by digest: {froms}"
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
        _stand_in_base(buildah, debootstrap, work, base_python(DOCKERFILE.read_text()))
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


def test_the_image_runs_the_python_of_its_pinned_base(image: Image) -> None:
    version = base_python(DOCKERFILE.read_text())
    check = "import sys; print(*sys.version_info[:2], sep='.', end=' '); print(sys.prefix)"
    # The interpreter the build stage's uv found, and the venv every service runs in.
    for python, prefix in (("/usr/local/bin/python3", "/usr/local"), ("python", "/app/.venv")):
        done = image.run(python, "-c", check)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [version, prefix]


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
    names = ("api", "nats", "pg", "sim", "prober", "spc-engine", "alerter")
    ports = dict(zip(names, free_ports(len(names)), strict=True))  # asked together: all distinct
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


def test_the_build_tool_is_the_pinned_buildah() -> None:
    binary = shutil.which("buildah")
    if binary is None:
        pytest.skip("buildah is not installed (.ci/system-packages installs the pinned one)")
    _assert_pinned_buildah(binary)
    # A pin to another version is refused.
    with pytest.raises(AssertionError, match="pinned buildah"):
        _assert_pinned_buildah(binary, "1.0.0+ds1-1")


def test_only_the_from_lines_are_rewritten_for_the_stand_in() -> None:
    text = DOCKERFILE.read_text()
    rewritten = stand_in_dockerfile(text)
    assert rewritten.count(f"FROM {STAND_IN}") == len(PINNED_BASE.findall(text)) == 2
    version = base_python(text)
    assert re.fullmatch(r"3\.\d+", version)
    # Two stages on two Python versions cannot share a venv: refused.
    with pytest.raises(AssertionError, match="one Python version"):
        base_python(text.replace(f"FROM python:{version}-slim", "FROM python:3.99-slim", 1))
    # The pattern matches nothing else: an unpinned base is refused.
    with pytest.raises(AssertionError, match="pins python"):
        stand_in_dockerfile(text.replace("@sha256:", "-unpinned:", 1))
