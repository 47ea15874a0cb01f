"""Data parallelism across processes and devices: 2 processes x 2 CPU devices == 1 x 4 == 1 x 1.

Every run is a subprocess (the device count is fixed when JAX starts). The runs
are shared: one 2-process run, one 4-device reference, one 1-device resume.
"""

import shutil

import numpy as np
import pytest
import workers

STEPS = 6


def assert_params_close(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_data_dir):
    """One process, 4 devices, checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("reference")
    args = workers.train_args(
        workdir, digits_data_dir, num_train_steps=STEPS, checkpoint_every_steps=3
    )
    assert workers.run(args, devices=4, log_path=workdir / "log.txt") == 0, (
        workdir / "log.txt"
    ).read_text()[-3000:]
    return workdir


def test_two_processes_train_like_one(tmp_path, digits_data_dir, reference):
    port = workers.free_port()
    args = workers.train_args(
        tmp_path, digits_data_dir, num_train_steps=STEPS, checkpoint_every_steps=3
    )
    processes = [
        workers.start(
            [
                *args,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            devices=2,
            log_path=tmp_path / f"log_{i}.txt",
            cache=False,
        )  # fmt: skip
        for i in range(2)
    ]
    codes = workers.wait_all(processes, timeout=300)
    logs = [(tmp_path / f"log_{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    params = [workers.load_params(tmp_path / f"params_{i}.npz") for i in range(2)]
    assert_params_close(params[1], params[0], atol=0)  # Both processes hold the same state.
    expected = workers.load_params(reference / "params_0.npz")
    assert_params_close(params[0], expected)
    assert workers.checkpoint_steps(tmp_path) == [3, 6]
    assert '"devices": 4' in logs[0]
    # Only process 0 writes the training log.
    assert "step 6/6" in logs[0] and "step 6/6" not in logs[1]


def test_resume_on_one_device_from_four(tmp_path, digits_data_dir, reference):
    """A checkpoint of a 4-device run resumes on 1 device and ends where the 4-device run did."""
    shutil.copytree(reference / "checkpoints" / "3", tmp_path / "checkpoints" / "3")
    args = workers.train_args(
        tmp_path, digits_data_dir, num_train_steps=STEPS, checkpoint_every_steps=3
    )
    code = workers.run(args, devices=1, log_path=tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-3000:]
    assert "1 devices" in log and "starting at step 3" in log
    assert workers.checkpoint_steps(tmp_path) == [3, 6]
    expected = workers.load_params(reference / "params_0.npz")
    assert_params_close(workers.load_params(tmp_path / "params_0.npz"), expected)
