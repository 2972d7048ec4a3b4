"""The README's runnable command-line block runs as pasted, in an empty directory."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.slow
def test_readme_runnable_block(tmp_path):
    if shutil.which("batchal", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]) is None:
        pytest.skip("the batchal console script is not installed")
    text = README.read_text()
    block = re.search(r"<!-- readme-runnable[^>]*-->\n```bash\n(.*?)```", text, re.S).group(1)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], MPLBACKEND="Agg")
    p = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "error:" not in p.stderr
    for f in ("C.npy", "C.report.json", "C50.npy", "batch1.csv", "batch2.npy", "sim/summary.md", "sim/curves.png"):
        assert (tmp_path / f).exists(), f
    assert json.loads((tmp_path / "sim" / "run.json").read_text())["class_names"] == ["ant", "bee", "cat"]
    assert not [p for p in tmp_path.rglob(".*")], "a temporary was left behind"
