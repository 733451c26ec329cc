"""``pip install .`` (not editable): the package carries its configs and runs from any folder, with
the default stores in the folder it was started from."""

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_installed_wheel_runs_from_another_folder(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), ROOT], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("lenet_sweep-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    # the installed copy comes first on the path (the dependencies come from this environment)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)

    where = run("-c", "import lenet_sweep; print(lenet_sweep.__file__, lenet_sweep.CONF_DIR)")
    assert where.stdout.split() == [str(site / "lenet_sweep" / "__init__.py"), str(site / "lenet_sweep" / "conf")]
    job = run("-m", "lenet_sweep", "--cfg", "job")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "lr: 0.9" in job.stdout and "activation: sigmoid" in job.stdout
    trained = run("-m", "lenet_sweep", *TINY, f"hydra.run.dir={work}/out")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (work / "mlflow.db").is_file() and (work / "mlruns").is_dir()  # the default stores: here
    [run_] = all_runs(MlflowClient(f"sqlite:///{work}/mlflow.db"))
    assert run_.info.status == "FINISHED"
