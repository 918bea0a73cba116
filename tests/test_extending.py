"""README's "Extending anoaug" is true: its example generator and detector, copied from the README into a
module of their own, register through $ANOAUG_PLUGINS and run through `anoaug generate` and `anoaug
evaluate` in a fresh process, like the built-ins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(marker: str) -> str:
    """The python code block that follows ``<!-- extending:<marker> -->`` in README.md."""
    m = re.search(rf"<!-- extending:{marker} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, f"README.md has no example marked extending:{marker}"
    return m.group(1)


def _anoaug(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_generator_and_detector_run_through_the_cli(tmp_path: Path, demo_root: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_parts.py").write_text(readme_example("generator") + "\n\n" + readme_example("detector"))
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "ANOAUG_PLUGINS": "my_parts",
        "PYTHONPATH": os.pathsep.join([str(plugins), repo, os.environ.get("PYTHONPATH", "")]),
    }
    shards = tmp_path / "stamp"
    gen = _anoaug(
        [
            "generate", str(demo_root), "-c", "cap", "-g", "stamp", "-n", "4",
            "--param", "darken=0.3", "--out", str(shards),
        ],
        env,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stdout + gen.stderr
    record = json.loads((shards / "run.json").read_text())
    assert record["generator"] == "stamp" and record["generator_params"] == {"darken": 0.3}

    # A typo in the plug-in's settings is caught like a built-in's: exit 2, the key named.
    bad_args = ["generate", str(demo_root), "-c", "cap", "-g", "stamp", "--param", "darkn=1"]
    bad = _anoaug([*bad_args, "--out", str(tmp_path / "bad")], env)
    assert bad.returncode == 2 and "darkn" in bad.stdout + bad.stderr

    out = tmp_path / "eval"
    ev = _anoaug(
        [
            "evaluate", str(demo_root), "-c", "cap", "--models", "mean-diff", "--arms", "none,real-few,stamp",
            "--shards", f"stamp={shards}", "--seeds", "0", "--image-size", "32", "--out", str(out),
        ],
        env,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    for arm in ("none", "real-few", "stamp"):
        metrics = json.loads((out / "runs" / "mean-diff" / arm / "seed0" / "metrics.json").read_text())
        assert 0.0 <= metrics["metrics"]["pixel_auroc"] <= 1.0
        assert metrics["implementation"] == "mean-diff (README example)"
    run = json.loads((out / "run.json").read_text())
    stamp_arm = next(a for a in run["arms"] if a["name"] == "stamp")
    assert stamp_arm["generator"] == "stamp" and stamp_arm["train_size"] > 0
    assert "stamp" in (out / "report.md").read_text()
