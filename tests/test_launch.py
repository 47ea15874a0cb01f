"""launch/ scripts: valid bash, --dry-run prints the exact command lines, and every input
is checked before anything is created."""

import shlex
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize("script", ["tpu.sh", "gpu.sh", "common.sh"])
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("accelerator", ["v4-8", "v4-32"])
def test_tpu_dry_run_prints_gcloud_commands(accelerator):
    result = launch(
        "tpu.sh", "--dry-run", f"--accelerator-type={accelerator}", "--zone=us-central2-b",
        "--spot", "--workdir=gs://bucket/nin_svhn", "--data-dir=gs://bucket/tfds",
        "up", "logs", "delete", "--", "--config.num_epochs=40",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    check, *lines = result.stdout.splitlines()
    assert check == (
        f"python3 -m nin_jax.aot --config=configs/svhn.py --topology={accelerator} "
        "--config.num_epochs=40"
    )
    zone = "--zone=us-central2-b"
    assert lines[0] == (
        f"gcloud compute tpus tpu-vm create nin-jax --accelerator-type={accelerator} "
        f"--version=tpu-ubuntu2204-base --spot {zone}"
    )
    assert lines[1].startswith("git -C ") and lines[1].endswith(" HEAD")
    assert lines[2].startswith("gcloud compute tpus tpu-vm scp ")
    assert lines[2].endswith(f" nin-jax:nin_jax.tar.gz --worker=all {zone}")
    install, train, logs = (shlex.split(line) for line in lines[3:6])
    assert install[:7] == "gcloud compute tpus tpu-vm ssh nin-jax --worker=all".split()
    assert install[7].endswith('python3 -m pip install -q -e ".[tpu]"')
    assert train[:7] == install[:7] and train[8] == zone
    command = train[7].removeprefix("--command=")
    assert shlex.split(command)[:12] == [
        "cd", "nin_jax", "&&", "nohup", "python3", "-m", "nin_jax.main",
        "--config=configs/svhn.py", "--workdir=gs://bucket/nin_svhn", "--distributed",
        "--config.data_dir=gs://bucket/tfds", "--config.num_epochs=40",
    ]  # fmt: skip
    assert logs[6:8] == ["--worker=0", "--command=tail -n 100 -F ~/nin_jax_train.log"]
    assert lines[6] == f"gcloud compute tpus tpu-vm delete nin-jax --quiet {zone}"
    assert len(lines) == 7


def test_gpu_dry_run_prints_gcloud_commands():
    result = launch("gpu.sh", "--dry-run", "--workdir=gs://bucket/w", "--project=p", "up", "delete")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gcloud compute instances create nin-jax-gpu ")
    assert "--accelerator=type=nvidia-l4,count=1" in lines[0]
    assert lines[0].endswith("--zone=us-central1-a --project=p")
    assert 'pip install -q -e ".[cuda]"' in lines[3]
    train = shlex.split(lines[4])
    assert train[:4] == ["gcloud", "compute", "ssh", "nin-jax-gpu"]
    assert (
        "nohup python3 -m nin_jax.main --config=configs/svhn.py --workdir=gs://bucket/w "
        in train[4]
    )
    assert "--distributed" not in train[4]
    assert (
        lines[5]
        == "gcloud compute instances delete nin-jax-gpu --quiet --zone=us-central1-a --project=p"
    )


def test_tpu_up_skip_check_and_check_alone():
    skipped = launch("tpu.sh", "--dry-run", "--workdir=gs://b/w", "--skip-check", "up")
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.startswith("gcloud compute tpus tpu-vm create nin-jax ")
    assert "nin_jax.aot" not in skipped.stdout
    check = launch(
        "tpu.sh", "--dry-run", "--accelerator-type", "v5litepod-16", "--config=configs/cifar10.py",
        "check", "--", "--config.batch_size=64", "--distributed", "--config.dtype=bfloat16",
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stdout == (  # Only the --config.* flags: nin_jax.aot takes no others.
        "python3 -m nin_jax.aot --config=configs/cifar10.py --topology=v5litepod-16 "
        "--config.batch_size=64 --config.dtype=bfloat16\n"
    )


GS = "--workdir=gs://bucket/w"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run", "train"], "train needs --workdir=gs://"),
        (["--dry-run", "up"], "train needs --workdir=gs://"),
        (["--dry-run", "--workdir=/local", "up"], "train needs --workdir=gs://"),
        (["--dry-run", GS, "--data-dir=/data", "up"], "--data-dir=/data: give a gs://"),
        (["--dry-run", GS, "--accelerator-type=v4_8", "up"], "v4_8 is not a TPU type"),
        (["--dry-run", "--accelerator-type=tpu-v9", "create"], "tpu-v9 is not a TPU type"),
        (["--dry-run", GS, "--config=configs/nosuch.py", "up"], "configs/nosuch.py: no such file"),
        (["--dry-run", "--config=/tmp/my.py", "check"], "give the path in this checkout"),
        (["--dry-run", GS, "up", "--zone"], "--zone needs a value"),
        (["--dry-run", "reboot"], "unknown argument 'reboot'"),
        (["--dry-run", "--reboot", "up"], "unknown argument '--reboot'"),
        (["--dry-run"], "Commands run in the order given"),
    ],
)
def test_tpu_bad_input_stops_before_any_command(args, message):
    result = launch("tpu.sh", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""  # Nothing ran, nothing was created.


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run", "up"], "train needs --workdir"),
        (["--dry-run", "--workdir=/w", "--accelerator=nvidia-l4", "up"], "is not type=GPU,count=N"),
        (["--dry-run", "--accelerator=type=nvidia-l5,count=1", "create"], "nvidia-l5,count=1 is"),
        (["--dry-run", "--workdir=/w", "--config=configs/nosuch.py", "up"], "no such file"),
        (["--dry-run", "--workdir=/w", "check"], "unknown argument 'check'"),
    ],
)
def test_gpu_bad_input_stops_before_any_command(args, message):
    result = launch("gpu.sh", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("script", ["tpu.sh", "gpu.sh"])
def test_both_scripts_parse_the_shared_options_alike(script):
    """One parser (launch/common.sh): `--flag value` and `--flag=value` are the same."""
    spaced = launch(script, "--dry-run", "--zone", "europe-west4-a", "--project", "p", "delete")
    joined = launch(script, "--dry-run", "--zone=europe-west4-a", "--project=p", "delete")
    assert spaced.returncode == joined.returncode == 0, spaced.stderr + joined.stderr
    assert spaced.stdout == joined.stdout
    assert spaced.stdout.rstrip().endswith("--quiet --zone=europe-west4-a --project=p")
    assert "while" not in (LAUNCH / script).read_text()  # No parsing loop of its own.
