"""vLLM's launch flags for the GPU scripts/start_vllm.sh finds: ``--max-model-len``,
``--gpu-memory-utilization`` and ``--max-num-seqs``, by the GPU's memory.

    python3 -m scripts.vllm_flags --gpu-mem-mib 81559 [--guard]   ->  8192 0.90 64   (0.80 with --guard)

Standard library only: start_vllm.sh runs it with whatever python3 the pod has, before any venv exists.
The numbers are for the default chat model, Qwen2.5-7B-Instruct in bfloat16: 15.2 GB of weights, and a KV
cache of 56 KiB per token (28 layers x 4 KV heads x 128 dims x K and V x 2 bytes), so 0.44 GB per
8192-token sequence. vLLM reserves its share of the GPU up front (weights + profiled activations, about
2-3 GB at its default 8192 batched tokens, + KV cache) and refuses to start when one max-model-len sequence
does not fit; scripts/preflight.py checks that against the real model before the deploy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

MIB_PER_GIB = 1024


@dataclass(frozen=True, slots=True)
class VllmFlags:
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int

    def words(self) -> str:
        return f"{self.max_model_len} {self.gpu_memory_utilization:.2f} {self.max_num_seqs}"


@dataclass(frozen=True, slots=True)
class Row:
    min_gib: float  # the smallest memory.total (GiB, as nvidia-smi reports it) this row is for
    max_model_len: int
    max_num_seqs: int


# Highest first. A GPU sold as "80 GB" reports 79.6 GiB, "48 GB" 44.5-47.5, "24 GB" 22.0-23.6: each row
# starts below the smallest card of its class.
TABLE: tuple[Row, ...] = (
    # 80 GB and up (A100/H100 80 GB, H200): 0.90 x 80 = 72 GB, less 15.2 weights and ~3 activations, leaves
    # ~54 GB of KV cache: 120 sequences at the full 8192 tokens, far more at the 1-2k tokens a chat request
    # really has. 64 at once keeps the per-token latency of a full batch low; more would only queue deeper.
    Row(70.0, 8192, 64),
    # 40-48 GB (A100 40 GB, L40S, A6000): 0.90 x 44.5 = 40 GB, less 18 leaves ~22 GB: 50 full sequences,
    # 40 with the guard's 0.10 taken out. 32 at once leaves room for long histories.
    Row(38.0, 8192, 32),
    # 24 GB (L4, A10, RTX 4090): 0.90 x 22 = 19.8 GB, less 18 leaves under 2 GB of KV cache. 4096 tokens
    # (0.22 GB a sequence) still hold the system prompt, the 1024-token history budget and a reply; 16
    # sequences is what fits at typical lengths. With the guard on the same card this is tight:
    # scripts/preflight.py says so before the deploy.
    Row(20.0, 4096, 16),
    # Smaller cards do not hold the 7B in bfloat16 at all; these flags are for a smaller LLM_MODEL_ID.
    Row(0.0, 2048, 8),
)

# The share of the GPU vLLM reserves. 0.90 leaves the CUDA context and the LLM service's own process room;
# with the guard's vLLM on the same GPU (its GUARD_VLLM_GPU_MEMORY_UTILIZATION, 0.10 by default) the chat
# model takes 0.80, so the two reservations never add up to more than the card.
SHARE_ALONE = 0.90
SHARE_WITH_GUARD = 0.80


def choose(gpu_mem_gib: float | None, *, guard: bool) -> VllmFlags:
    """The flags for a GPU of ``gpu_mem_gib`` GiB; None (no GPU found) gets the 80 GB row, the deploy
    default, so a missing nvidia-smi changes nothing that worked before."""
    gib = TABLE[0].min_gib if gpu_mem_gib is None else gpu_mem_gib
    row = next(r for r in TABLE if gib >= r.min_gib)
    share = SHARE_WITH_GUARD if guard else SHARE_ALONE
    return VllmFlags(row.max_model_len, share, row.max_num_seqs)


def parse_nvidia_smi(text: str) -> float | None:
    """GiB of the first GPU in ``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`` (MiB,
    one line per GPU); vLLM runs on the first visible one. None when there is no number."""
    for line in text.splitlines():
        try:
            return float(line.strip()) / MIB_PER_GIB
        except ValueError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-mem-mib", help="memory.total of the GPU in MiB (empty: no GPU found)")
    parser.add_argument("--gpu-mem-gb", type=float, help="the same in GiB")
    parser.add_argument("--guard", action="store_true", help="the guard's vLLM shares this GPU")
    args = parser.parse_args(argv)
    gib = args.gpu_mem_gb if args.gpu_mem_gb is not None else parse_nvidia_smi(args.gpu_mem_mib or "")
    print(choose(gib, guard=args.guard).words())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
