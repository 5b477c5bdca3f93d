"""The malloc settings: the environment they add, and the re-execution that puts them in effect."""

import os
import subprocess
import sys

import pytest

from tinysam_backend.allocator import ALLOCATOR_ENV, allocator_env, tuning_enabled

pytestmark = pytest.mark.skipif(not tuning_enabled({}), reason="malloc tuning applies to glibc Linux only")

PROBE = ("from tinysam_backend.allocator import reexec_with_tuned_allocator as r; r(); import os; "
         "print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != "TINYSAM_MALLOC_TUNING"}
    env.update(extra)
    return env


def test_env_is_added_but_a_users_value_wins():
    env = allocator_env({"MALLOC_TRIM_THRESHOLD_": "123"})
    assert env["MALLOC_TRIM_THRESHOLD_"] == "123"
    assert env["MALLOC_MMAP_THRESHOLD_"] == ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]
    assert "MALLOC_MMAP_THRESHOLD_" not in allocator_env({"TINYSAM_MALLOC_TUNING": "0"})


def test_process_reexecutes_itself_with_the_variables():
    out = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == [ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"], ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]]


def test_tuning_off_leaves_the_process_alone():
    out = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(TINYSAM_MALLOC_TUNING="0"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]
