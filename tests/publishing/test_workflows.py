"""The GitHub workflows do what the README and CONTRIBUTING promise, with least privilege.

(`make lint` runs actionlint and zizmor over them; this checks what those do not know.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _runs(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def test_every_action_is_pinned_to_a_commit():
    """Every `uses:` names a full commit SHA (tags can be moved), with the version in a comment."""
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for line in path.read_text().splitlines():
            if "uses:" in line:
                assert re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40}  # v\d", line), f"{path.name}: {line}"


def test_ci_runs_the_readme_commands_and_lint_on_every_push_and_pull_request():
    """ci.yml runs the README's two commands and `make lint`, on push and on pull requests."""
    ci = _load("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = re.findall(r"^(make \w+)", first_block, flags=re.MULTILINE)
    assert commands == ["make book", "make test"]
    runs = _runs(ci["jobs"]["test"])
    for command in [*commands, "make lint"]:
        assert command in runs, f"ci.yml does not run {command}"


def test_least_privilege():
    """Nothing by default; reading the repository to test; Pages rights only for the deploy on main."""
    for name in ("ci.yml", "smoke-real-data.yml"):
        workflow = _load(name)
        assert workflow["permissions"] == {}, name
        for job_name, job in workflow["jobs"].items():
            allowed = ({"pages": "write", "id-token": "write"} if job_name == "deploy"
                       else {"contents": "read"})
            assert job["permissions"] == allowed, f"{name}: {job_name}"
            for step in job.get("steps", []):
                if "actions/checkout@" in step.get("uses", ""):
                    assert step["with"]["persist-credentials"] is False
    deploy = _load("ci.yml")["jobs"]["deploy"]
    assert deploy["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert deploy["needs"] == "test" and deploy["environment"]["name"] == "github-pages"
    upload = [s for s in _load("ci.yml")["jobs"]["test"]["steps"]
              if "upload-pages-artifact" in s.get("uses", "")]
    assert upload[0]["with"]["path"] == "_build/html" and upload[0]["if"] == deploy["if"]


def test_smoke_runs_every_profile_weekly_and_keeps_the_notebooks():
    """smoke-real-data.yml: weekly and on demand, `make smoke-aws`, notebooks uploaded even on failure."""
    smoke = _load("smoke-real-data.yml")
    assert "workflow_dispatch" in smoke["on"] and len(smoke["on"]["schedule"]) == 1
    minute, hour, day, month, weekday = smoke["on"]["schedule"][0]["cron"].split()
    assert minute.isdigit() and hour.isdigit() and day == month == "*" and weekday.isdigit()  # weekly
    job = smoke["jobs"]["smoke"]
    assert "make venv" in _runs(job)
    assert any(run.startswith("make smoke-aws") for run in _runs(job))
    upload = [s for s in job["steps"] if "actions/upload-artifact@" in s.get("uses", "")]
    assert upload and upload[0]["if"] == "always()"
    assert upload[0]["with"]["path"].startswith("_build/smoke/")
    assert "smoke-aws:" in (ROOT / "Makefile").read_text()


def test_ci_installs_chromium_before_the_tests():
    """ci.yml's test job runs in Debian (whose `chromium` and `chromium-driver` the browser test
    uses) and installs both before `make test`."""
    job = _load("ci.yml")["jobs"]["test"]
    assert "bookworm" in job["container"]["image"]
    runs = _runs(job)
    install = [i for i, run in enumerate(runs) if "apt-get install" in run]
    assert install, "ci.yml installs no Chromium"
    words = runs[install[0]].split()
    assert "chromium" in words and "chromium-driver" in words
    assert install[0] < runs.index("make test")
    assert "export CI=" in (ROOT / ".ci" / "run").read_text()


def _browser_test_without_chromium(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env["PATH"] = str(tmp_path)  # an empty folder: neither chromium nor chromedriver is found
    if ci is not None:
        env["CI"] = ci
    # --noconftest: the browser test needs none of the sample-world fixtures (and starts at once)
    cmd = [sys.executable, "-m", "pytest", "tests/book/test_book_browser.py", "-k", "navigation",
           "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist", "--noconftest"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_browser_test_fails_in_ci_without_chromium(tmp_path):
    """With CI=true and no Chromium the browser test fails; outside CI it is skipped with the reason."""
    in_ci = _browser_test_without_chromium(tmp_path, "true")
    assert in_ci.returncode != 0, in_ci.stdout[-2000:]
    assert "CI=true and headless Chromium is not installed" in in_ci.stdout, in_ci.stdout[-2000:]
    outside = _browser_test_without_chromium(tmp_path, None)
    assert outside.returncode == 0, outside.stdout[-2000:]
    assert "1 skipped" in outside.stdout and "apt-get install chromium chromium-driver" in outside.stdout


def test_make_test_runs_on_every_core_one_module_per_worker():
    """`make test` runs pytest-xdist workers with --dist loadscope: nbval needs a notebook's cells in
    one kernel, and the module-scoped fixtures (a book build, a smoke run) run once."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: ", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    assert re.search(r"-n \$\(TEST_WORKERS\) --dist loadscope", recipe), recipe
    assert re.search(r"^TEST_WORKERS \?= auto$", makefile, flags=re.MULTILINE)
