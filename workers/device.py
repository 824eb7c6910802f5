"""Which device a coding actor runs on."""

from __future__ import annotations


def pick_device(requested: str = "auto", gpu_ids: list | None = None, cuda: bool | None = None) -> str:
    """``requested`` itself unless it is ``"auto"``; then ``"cuda"`` where Ray
    gave this actor a share of a GPU (``ray.get_gpu_ids()``; Ray also sets
    ``CUDA_VISIBLE_DEVICES`` to it) and torch can use CUDA, else ``"cpu"``.

    Both coders decode exactly across devices (docs/format.md), so an archive
    encoded on a GPU actor decodes on a CPU one and the other way round.
    ``gpu_ids`` and ``cuda`` stand in for Ray's and torch's answers (tests)."""
    if requested != "auto":
        return requested
    if gpu_ids is None:
        try:
            import ray

            gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        except Exception:  # not in a Ray worker: no GPU assigned
            gpu_ids = []
    if not gpu_ids:
        return "cpu"
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return "cuda" if cuda else "cpu"
