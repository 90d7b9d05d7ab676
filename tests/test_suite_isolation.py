"""`make test` runs every test in a pytest-xdist worker: a test that kills its process (a segfault in a native
kernel) must fail by name while the rest of the suite runs and the summary prints. Checked with the Makefile's
own flags on a scratch suite whose middle test dereferences a null pointer."""

import re
import subprocess
import sys
from pathlib import Path

CRASHING_SUITE = '''
import ctypes

def test_before():
    pass

def test_segfault():
    ctypes.string_at(0)  # SIGSEGV, like the int8 kernel did on misaligned rows

def test_after():
    pass
'''


def _make_test_flags() -> list[str]:
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    return re.search(r"^PYTEST_FLAGS \?= (.+)$", makefile, re.M).group(1).split()


def test_a_native_crash_fails_one_test_and_the_suite_goes_on(tmp_path):
    (tmp_path / "test_crash.py").write_text(CRASHING_SUITE)
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", *_make_test_flags(), "-p", "no:cacheprovider", "-q",
                        "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "crashed while running 'test_crash.py::test_segfault'" in r.stdout, r.stdout
    assert re.search(r"^1 failed, 3 passed", r.stdout, re.M), r.stdout


def test_test_file_names_are_unique():
    """tests/ folders are not packages: pytest imports each file by its basename, so two test_x.py in two
    folders make one of them an 'import file mismatch' error at collection (seen when helpers merged)."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
