"""Builds the image with ``--build-arg PDF_REPORTS=true`` and fetches ``/report.pdf`` from it.

Not a test: the build takes most of an hour on two shared cores. It builds the image the way
tests/deploy/test_image_build.py does (buildah, vfs storage, chroot isolation, a stand-in for the
pinned base made by debootstrap with the host's CPython of the base's version: no registry can be
reached here), adds the build argument, then runs ``llmscope up`` inside the image (chroot
isolation shares the host's network), logs in with the printed API key, asks for
``/report.pdf?hours=24`` and checks that the answer is a PDF that ``pdftoppm`` rasterises.
It prints each step's time and PASS or MISS.

    nice -n 19 .venv/bin/python bench/pdf_image_check.py            # needs root, buildah, debootstrap
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.deploy.test_image_build import (  # noqa: E402  (the image test's own build steps)
    DOCKERFILE,
    Buildah,
    Image,
    _stand_in_base,
    _tools,
    base_python,
    stand_in_dockerfile,
)

from llmscope.stack.ports import free_ports  # noqa: E402

IMAGE = "localhost/llmscope:pdf"


def _say(started: float, what: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {what}", flush=True)


def build(buildah: Buildah, work: Path, started: float) -> Image:
    _stand_in_base(buildah, _tools()[1], work, base_python(DOCKERFILE.read_text()))
    _say(started, "stand-in base built")
    dockerfile = work / "Dockerfile"
    dockerfile.write_text(stand_in_dockerfile(DOCKERFILE.read_text()))
    buildah(
        "bud", "--isolation", "chroot", "--pull=never", "--build-arg", "PDF_REPORTS=true",
        "-f", str(dockerfile), "-t", IMAGE, str(ROOT),
        timeout=3600,
    )  # fmt: skip
    _say(started, "image built with PDF_REPORTS=true")
    inspected = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
    container = buildah("from", "--pull=never", IMAGE).stdout.strip().splitlines()[-1]
    return Image(buildah, container, inspected["OCIv1"]["config"])


def report_from_image(image: Image, work: Path, started: float) -> bool:
    version = image.run("chromium", "--version")
    print(f"chromium in the image: {version.stdout.strip() or version.stderr.strip()}")
    if version.returncode != 0:
        print("MISS: no chromium in the image")
        return False
    names = ("api", "nats", "pg", "sim", "prober", "spc-engine", "alerter")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {
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
    control = work / "control"
    control.mkdir()
    # buildah run passes no signals on: a shell stops `up` when the control file appears.
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
    threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True).start()
    ok = False
    try:
        deadline = time.monotonic() + 300
        key = None
        while time.monotonic() < deadline and key is None and proc.poll() is None:
            found = re.search(r"API key\s+(\S+)", "".join(output))
            key = found.group(1) if found else None
            time.sleep(0.5)
        if key is None:
            print("MISS: `llmscope up` in the image printed no API key\n" + "".join(output[-80:]))
            return False
        _say(started, "llmscope up running in the image")
        base = f"http://127.0.0.1:{ports['api']}"
        with httpx.Client(base_url=base, timeout=120) as client:
            login = client.post("/login", data={"key": key, "next": "/"})
            if login.status_code != 303:
                print(f"MISS: login answered {login.status_code}: {login.text[:200]}")
                return False
            # A few probes first, so the report has a model and a chart to print.
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                charts = client.get("/api/charts", headers={"Authorization": f"Bearer {key}"})
                if charts.status_code == 200 and charts.json():
                    break
                time.sleep(2)
            t0 = time.monotonic()
            reply = client.get("/report.pdf", params={"hours": 24})
            took = time.monotonic() - t0
        print(f"/report.pdf: HTTP {reply.status_code}, {len(reply.content)} bytes, {took:.1f} s")
        if reply.status_code != 200 or not reply.content.startswith(b"%PDF"):
            print(f"MISS: {reply.text[:300]}")
            return False
        pdf = work / "report.pdf"
        pdf.write_bytes(reply.content)
        keep = ROOT / "build" / "pdf-image"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(pdf, keep / "report.pdf")
        pdftoppm = shutil.which("pdftoppm")
        if pdftoppm:
            done = subprocess.run(
                [pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(keep / "page")],
                capture_output=True,
                timeout=120,
            )
            print(f"pdftoppm exit {done.returncode}: {sorted(p.name for p in keep.glob('page*.png'))}")
            ok = done.returncode == 0
        else:
            ok = True
        print(("PASS" if ok else "MISS") + f": the report PDF is in {keep}")
        return ok
    finally:
        (control / "stop").touch()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    started = time.monotonic()
    binary, _ = _tools()
    work = Path(tempfile.mkdtemp(prefix="llmscope-pdf-image-"))
    buildah = Buildah(binary, work / "storage")
    try:
        image = build(buildah, work, started)
        size = buildah("images", "--format", "{{.Size}}", IMAGE).stdout.strip()
        print(f"image size: {size}")
        return 0 if report_from_image(image, work, started) else 1
    finally:
        subprocess.run(buildah.command("rm", "--all"), capture_output=True, timeout=300)
        subprocess.run(buildah.command("rmi", "--all", "--force"), capture_output=True, timeout=300)
        shutil.rmtree(work, ignore_errors=True)
        _say(started, "done")


if __name__ == "__main__":
    raise SystemExit(main())
