"""The vLLM launch flags chosen from the GPU's memory (scripts/vllm_flags.py); start_vllm.sh's use of them is
tested with a fake nvidia-smi and a fake vLLM in tests/integration/test_deploy_scripts.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.service_process import REPO_ROOT
from scripts.vllm_flags import VllmFlags, choose, parse_nvidia_smi


@pytest.mark.parametrize(
    ("mib", "flags"),
    [
        (143771, VllmFlags(8192, 0.90, 64)),  # H200
        (81559, VllmFlags(8192, 0.90, 64)),  # H100 / A100 80 GB
        (46068, VllmFlags(8192, 0.90, 32)),  # L40S
        (40960, VllmFlags(8192, 0.90, 32)),  # A100 40 GB
        (23034, VllmFlags(4096, 0.90, 16)),  # L4
        (24564, VllmFlags(4096, 0.90, 16)),  # RTX 4090
        (16384, VllmFlags(2048, 0.90, 8)),  # too small for the 7B; flags for a smaller model
    ],
)
def test_each_gpu_class_gets_its_row(mib: int, flags: VllmFlags) -> None:
    assert choose(mib / 1024, guard=False) == flags


def test_the_guard_on_the_same_gpu_lowers_the_share_only() -> None:
    alone, shared = choose(79.6, guard=False), choose(79.6, guard=True)
    assert shared.gpu_memory_utilization == 0.80 and alone.gpu_memory_utilization == 0.90
    assert (shared.max_model_len, shared.max_num_seqs) == (alone.max_model_len, alone.max_num_seqs)


def test_no_gpu_found_keeps_the_old_deploy_defaults() -> None:
    assert choose(None, guard=False) == VllmFlags(8192, 0.90, 64)


def test_nvidia_smi_output_first_gpu_in_gib() -> None:
    assert parse_nvidia_smi("81559\n40960\n") == pytest.approx(79.65, abs=0.01)
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("No devices were found\n") is None


def test_the_command_line_prints_what_the_script_reads() -> None:
    def run(*args: str) -> str:
        cmd = [sys.executable, "-m", "scripts.vllm_flags", *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout

    assert run("--gpu-mem-mib", "81559", "--guard") == "8192 0.80 64\n"
    assert run("--gpu-mem-gb", "22.5") == "4096 0.90 16\n"
    assert run("--gpu-mem-mib", "") == "8192 0.90 64\n"
