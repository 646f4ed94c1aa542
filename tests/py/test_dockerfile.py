"""The Dockerfile is linted with hadolint (no Docker engine runs on these machines, so the
image is not built here; the release workflow builds it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: run scripts/setup.sh"
    return found


def test_dockerfile_passes_hadolint():
    run = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    run = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert run.returncode != 0 and "DL3006" in run.stdout


def test_final_image_is_small_and_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert stages[-1] == "scratch"
    final = text[text.rindex("FROM ") :]
    user = re.search(r"^USER (\d+)", final, re.M)
    assert user and int(user.group(1)) != 0
    assert 'ENTRYPOINT ["/usr/local/bin/polars-cloud-auth"]' in final


def test_the_real_node_builds_the_image_the_dockerfile_describes(tmp_path):
    """tests/py/oci.py builds our image for the real node (tests/py/test_node.py runs it)
    from the Dockerfile's final stage: its archive holds exactly the COPY destinations,
    with the USER, ENTRYPOINT, CMD, ENV, EXPOSE and LABELs of the Dockerfile."""
    import io
    import json
    import tarfile

    sys.path.insert(0, str(ROOT / "tests" / "py"))
    import oci

    binary = tmp_path / "polars-cloud-auth"
    binary.write_bytes(b"\x7fELF stand-in")
    binary.chmod(0o755)
    archive = tmp_path / "image.tar"
    oci.write_archive(oci.our_image(binary), "localhost/t/pca:1", archive)
    with tarfile.open(archive) as tar:
        blob = lambda d: tar.extractfile("blobs/sha256/" + d.split(":")[1]).read()  # noqa: E731
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))["config"]
        (layer,) = manifest["layers"]
        with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as files:
            members = {m.name: m for m in files.getmembers()}
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("FROM ") :]
    assert config["User"] == re.search(r"^USER (\S+)", final, re.M).group(1)
    assert config["Entrypoint"] == ["/usr/local/bin/polars-cloud-auth"]
    assert config["Cmd"] == ["--help"]
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in config["Env"]
    assert sorted(config["ExposedPorts"]) == ["8443/tcp", "8471/tcp"]
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    files = sorted(n for n, m in members.items() if m.isfile())
    assert files == ["etc/ssl/certs/ca-certificates.crt", "usr/local/bin/polars-cloud-auth"]
    assert members["usr/local/bin/polars-cloud-auth"].mode == 0o755


def test_an_instruction_the_builder_does_not_know_is_refused(tmp_path):
    """A final stage that grows an instruction (RUN, WORKDIR, ...) stops the node's image
    build with a message, so the image the tests run cannot drift from the Dockerfile."""
    sys.path.insert(0, str(ROOT / "tests" / "py"))
    import oci

    bad = tmp_path / "Dockerfile"
    bad.write_text((ROOT / "Dockerfile").read_text() + "WORKDIR /data\n")
    try:
        oci.final_stage(bad)
    except ValueError as e:
        assert "WORKDIR" in str(e)
    else:
        raise AssertionError("WORKDIR was accepted")
