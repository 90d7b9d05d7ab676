"""A write that fails for lack of space, in each stage of `llmkit run`: one clear error naming the path (exit 1, no
traceback), the earlier stages' artifacts intact, nothing half-written under a final name, and the next run,
with room again, finishes with the same payload as an uninterrupted run.

Two ways to fill the disk: a real small tmpfs (the run, its inputs and LLMKIT_HOME on it; skipped where mount is
not allowed), which catches every writer (Rust, C and Python); and, in process, Python's `open` patched to fail
with ENOSPC after N bytes, which reaches only the writes that go through Python file objects.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
import re
import shutil
import subprocess

import pytest
from reliab_helpers import NAME, diff, leftovers, payload, reference, run_cli, write_recipe

from llmkit.config import load_recipe
from llmkit.errors import DiskFull
from llmkit.pipeline import run_recipe

__all__ = ["reference"]  # the shared fixture

SLACK = 8 << 10  # bytes of room a stage gets: two tmpfs pages, less than any stage writes


def _used(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _mount(path, size: int, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"{'remount,' if remount else ''}size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount(mnt, 256 << 20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


# What a stage keeps on purpose so that the next run resumes: train's checkpoints, eval's finished items
RESUME_STATE = re.compile(r"^(train\.checkpoints|\.eval\.items-[0-9a-f]+\.jsonl)$")


def _run_state(root, stages):
    """The run folder's entries besides the resume state: the finished stages' artifacts, nothing else."""
    run = root / "runs" / NAME
    return sorted(p.name for p in run.iterdir() if not RESUME_STATE.match(p.name)) if run.is_dir() else []


def test_a_full_tmpfs_in_each_stage_fails_cleanly_and_the_next_run_finishes(reference, tiny_gguf, tmpfs,
                                                                             monkeypatch):
    stages = reference["stages"]
    monkeypatch.setenv("LLMKIT_HOME", str(tmpfs / "home"))
    for k, stage in enumerate(stages):
        write_recipe(tmpfs, tiny_gguf, stages[1:k + 1])  # the recipe up to this stage: the earlier ones are done
        before = payload(tmpfs, stages[:k])
        assert _mount(tmpfs, _used(tmpfs) + SLACK, remount=True).returncode == 0
        r = run_cli(tmpfs)
        assert r.returncode == 1, f"{stage}: rc {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
        err = re.findall(r"error: .*", r.stderr)  # (after an unclosed progress bar it shares the bar's line)
        assert len(err) == 1 and "no space left on the device" in err[0] and str(tmpfs) in err[0], r.stderr[-3000:]
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert payload(tmpfs, stages[:k]) == before  # the earlier artifacts are intact
        assert _run_state(tmpfs, stages) == sorted(stages[:k])
        assert leftovers(tmpfs) == [], stage  # no temp folder or half file left taking the space
        assert _mount(tmpfs, 256 << 20, remount=True).returncode == 0
        run_recipe(load_recipe(tmpfs / "r.yaml"), echo=lambda s: None)  # in process: one interpreter start less
    assert diff(payload(tmpfs, stages), reference["payload"]) == []


class _Budget:
    """Python's `open`, patched: files opened for writing under `root` share `left` bytes, then ENOSPC."""

    def __init__(self, root, left: int):
        self.root, self.left, self.hit = str(root), left, None
        self.real = builtins.open

    def open(self, file, mode="r", *a, **kw):
        f = self.real(file, mode, *a, **kw)
        if not any(c in mode for c in "wax+") or not str(os.fspath(file) if not isinstance(file, int) else "") \
                .startswith(self.root):
            return f
        budget, real_write = self, f.write

        def write(data):
            n = len(data)
            if n > budget.left:
                budget.hit = str(file)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            budget.left -= n
            return real_write(data)

        f.write = write
        return f


def test_a_patched_writer_out_of_space_in_each_stage(reference, tiny_gguf, tmp_path, monkeypatch):
    """In process, no mount: each stage in turn gets a seeded budget of bytes through Python's `open`."""
    stages, rng = reference["stages"], random.Random(3)
    root = tmp_path / "w"
    for k, stage in enumerate(stages):
        write_recipe(root, tiny_gguf, stages[1:k + 1])
        monkeypatch.setenv("LLMKIT_HOME", str(root / "home"))
        before = payload(root, stages[:k])
        budget = _Budget(root, rng.randrange(0, 512))  # below the smallest stage (promote: a ~1 KB manifest)
        with monkeypatch.context() as m:
            m.setattr(builtins, "open", budget.open)
            m.setattr(io, "open", budget.open)
            with pytest.raises(DiskFull) as e:
                run_recipe(load_recipe(root / "r.yaml"), echo=lambda s: None)
        assert budget.hit and budget.hit in str(e.value), (stage, budget.hit, str(e.value))
        assert payload(root, stages[:k]) == before
        assert _run_state(root, stages) == sorted(stages[:k])
        assert leftovers(root) == [], stage
        run_recipe(load_recipe(root / "r.yaml"), echo=lambda s: None)
    assert diff(payload(root, stages), reference["payload"]) == []
    shutil.rmtree(root)
