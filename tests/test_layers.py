"""The package's layers (pyproject's import-linter contract) hold, checked on an installed wheel: there the mapped
folders (adapters/, configs/, data_tools/) sit inside the package, as users import them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapt_runs import installed_wheel

REPO = Path(__file__).resolve().parents[1]


def test_dependencies_point_down_the_data_flow(tmp_path: Path) -> None:
    site = installed_wheel(tmp_path)
    for mapped in ("configs", "adapters", "data_tools"):  # optional layers in the contract: here they must be there
        assert (site / "simvlg_video" / mapped / "__init__.py").is_file(), mapped
    lint = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run(
        [sys.executable, "-c", lint, "--config", str(REPO / "pyproject.toml")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
