"""One family of user errors: the library raises exceptions carrying the message, and only the commands turn them
into exit statuses; nothing outside a command's `main`/`cli` (or its `__main__` block) exits the process."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = [REPO / "simvlg_video", REPO / "adapters", REPO / "data_tools", REPO / "configs"]
ENTRY_FUNCTIONS = {"main", "cli"}


def is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`"""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def exits_process(node: ast.AST) -> bool:
    """`raise SystemExit(...)`, `sys.exit(...)`, `exit(...)` or `quit(...)`."""
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "SystemExit"
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return func.value.id == "sys" and func.attr == "exit"
        return isinstance(func, ast.Name) and func.id in ("exit", "quit")
    return False


def process_exits(source: str) -> list[tuple[int, bool]]:
    """(line, allowed) of every statement that exits the process: allowed in a command's `main`/`cli` or its
    `__main__` block, where the module is a command (it has a `__main__` block)."""
    tree = ast.parse(source)
    command = any(is_main_block(node) for node in tree.body)
    found = []

    def visit(node: ast.AST, allowed: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            allowed = command and node.name in ENTRY_FUNCTIONS and node in tree.body
        elif is_main_block(node) and node in tree.body:
            allowed = True
        if exits_process(node):
            found.append((node.lineno, allowed))
        for child in ast.iter_child_nodes(node):
            visit(child, allowed)

    visit(tree, False)
    return found


def test_only_commands_exit_the_process():
    library = "import sys\ndef load(path):\n    raise SystemExit(f'error: {path}')\n"
    command = library + "def main():\n    sys.exit(2)\nif __name__ == '__main__':\n    sys.exit(main())\n"
    assert process_exits(library) == [(3, False)]  # the check sees an exit in library code, and one in a command
    assert process_exits(command) == [(3, False), (5, True), (7, True)]
    outside = [
        f"{path.relative_to(REPO)}:{line}"
        for folder in PACKAGE
        for path in sorted(folder.rglob("*.py"))
        for line, allowed in process_exits(path.read_text())
        if not allowed
    ]
    assert not outside, f"SystemExit outside a command's main: {outside}"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("simvlg_video.data.manifest", "ManifestError"),
        ("simvlg_video.model.config", "ModelDirError"),
        ("simvlg_video.formats.fingerprint", "FrozenSourceChanged"),
        ("simvlg_video.formats.tensor_io", "StateDictMismatch"),
        ("simvlg_video.formats.tensor_io", "NotATensorFile"),
        ("simvlg_video.data.clips", "DataConfigError"),
        ("simvlg_video.data.dataset", "TooManySkippedClips"),
        ("simvlg_video.data.shards", "ShardError"),
        ("simvlg_video.choices", "ChoiceError"),
        ("simvlg_video.train.checkpoint", "CheckpointError"),
        ("simvlg_video.train.resume", "ResumeRefused"),
        ("simvlg_video.train.trainer", "TrainingStopped"),
        ("simvlg_video.data_tools.check_videos", "CheckError"),
        ("simvlg_video.data_tools.conversion", "ConversionError"),
        ("simvlg_video.eval.visualize", "CannotDecode"),
        ("simvlg_video.eval.coco", "ScorerMissing"),
        ("simvlg_video.eval.runs", "RunsError"),
    ],
)
def test_the_errors_a_user_can_cause_are_one_family(module: str, name: str):
    import importlib

    from simvlg_video.errors import UserError

    assert issubclass(getattr(importlib.import_module(module), name), UserError)


def test_the_stage_has_no_list_of_its_own():
    import simvlg_video.stage

    assert not hasattr(simvlg_video.stage, "USER_ERRORS")
