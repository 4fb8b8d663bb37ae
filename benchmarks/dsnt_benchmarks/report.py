"""``results.md``: the measurements of a run as markdown tables and sentences."""

from __future__ import annotations

from .candidate import SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD
from .passes import PassCount
from .results import Group, SuiteResults, TorchStudies
from .scaling import sweep_exponents


def markdown_report(results: SuiteResults) -> str:
    """The results as markdown: times, multiples of the exp floor, speed-ups over dsntnn, then the torch studies."""
    lines = _groups_table(results.groups) + _jax_sentence(results.groups)
    if results.torch is not None:
        lines += _saved_bytes_table(results.torch) + _passes_table(results.torch)
        lines += _compiled_table(results.torch) + _sweep_table(results.torch)
    if results.native_first_call is not None:
        lines += [
            "",
            "Native kernels (`torch-native`, the default for CPU tensors): built or loaded from PyTorch's extension "
            f"cache in {results.native_first_call:.1f} s on the first call of this run.",
        ]
    return "\n".join(lines) + "\n"


def _speedup(group: Group, seconds: float, kind: str) -> str:
    """dsntnn's time for ``kind`` over ``seconds``, or "-" if dsntnn is not in the group."""
    reference = group.seconds("dsntnn", kind)
    return f"{reference / seconds:.2f}x" if reference is not None else "-"


def _groups_table(groups: list[Group]) -> list[str]:
    lines = [
        "| library | shape | candidate | time (ms) | x exp floor | speed-up over dsntnn |",
        "|---|---|---|---:|---:|---:|",
    ]
    for group in groups:
        for candidate, seconds in group.times.items():
            if candidate.is_floor:
                continue
            lines.append(
                f"| {group.library} | {group.shape} | {candidate.name} | {seconds * 1e3:.2f} | "
                f"{seconds / group.floor:.1f} | {_speedup(group, seconds, candidate.kind)} |"
            )
    return lines


def _jax_sentence(groups: list[Group]) -> list[str]:
    """The speed-up of the jitted JAX step over the naive composition under jit, per shape."""
    ratios = []
    for group in groups:
        naive, ours = group.seconds("naive", STEP_FWD_BWD), group.seconds("ours", STEP_FWD_BWD)
        if group.library == "jax" and naive is not None and ours is not None:
            ratios.append(f"{group.shape} {naive / ours:.2f}x")
    if not ratios:
        return []
    sentence = "JAX `jit(value_and_grad(dsnt_loss))`, speed-up over the naive composition under jit: "
    return ["", sentence + ", ".join(ratios) + "."]


def _saved_bytes_table(studies: TorchStudies) -> list[str]:
    if not studies.saved_bytes:
        return []
    lines = ["", f"Bytes kept for backward by a JS training step on {studies.shape}, in multiples of the logits:", ""]
    lines += ["| implementation | saved bytes / logits bytes |", "|---|---:|"]
    return lines + [f"| {name} | {ratio:.2f} |" for name, ratio in studies.saved_bytes.items()]


def passes_table(passes: dict[str, dict[str, PassCount]], shape: str) -> list[str]:
    """The heatmap-sized reads and writes per implementation, as a markdown table."""
    if not passes:
        return []
    lines = [
        "",
        f"Passes: heatmap-sized reads and writes of one call on {shape}, forward + backward (PyTorch "
        "operations counted as they ran; the native kernels' known from their C++ code):",
        "",
        f"| implementation | {SOFT_ARGMAX_FWD_BWD} | {STEP_FWD_BWD} |",
        "|---|---|---|",
    ]
    for implementation, kinds in passes.items():
        cells = [kinds[kind].label if kind in kinds else "-" for kind in (SOFT_ARGMAX_FWD_BWD, STEP_FWD_BWD)]
        lines.append(f"| {implementation} | " + " | ".join(cells) + " |")
    return lines


def _passes_table(studies: TorchStudies) -> list[str]:
    return passes_table(studies.passes, studies.shape)


def _compiled_table(studies: TorchStudies) -> list[str]:
    compiled = studies.compiled
    lines = [
        "",
        f"Opt-in compiled kernels (`dsnt_torch.use_compiled_kernels()`) on {compiled.shape}, one interleaved "
        f"group; the first call took {studies.compiled_first_call:.1f} s (compilation):",
        "",
        "| candidate | time (ms) | x exp floor | speed-up over dsntnn |",
        "|---|---:|---:|---:|",
    ]
    for candidate, seconds in compiled.times.items():
        if candidate.is_floor:
            continue
        lines.append(
            f"| {candidate.name} | {seconds * 1e3:.2f} | {seconds / compiled.floor:.1f} | "
            f"{_speedup(compiled, seconds, candidate.kind)} |"
        )
    return lines


def _sweep_table(studies: TorchStudies) -> list[str]:
    if not studies.sweep:
        return []
    candidates = list(next(iter(studies.sweep.values())))
    lines = [
        "",
        "Size sweep (torch, shapes (8, 17, n, n)), time in ms and the fitted exponent of time ~ (B*K*H*W)^a"
        " over all sizes and over the three largest:",
        "",
        "| B*K*H*W | " + " | ".join(c.name for c in candidates) + " |",
        "|---:|" + "---:|" * len(candidates),
    ]
    for size, times in studies.sweep.items():
        lines.append(f"| {size} | " + " | ".join(f"{times[c] * 1e3:.2f}" for c in candidates) + " |")
    for last, label in ((None, "a, all sizes"), (3, "a, three largest")):
        exponents = sweep_exponents(studies.sweep, last=last)
        lines.append(f"| {label} | " + " | ".join(f"{exponents.get(c, float('nan')):.2f}" for c in candidates) + " |")
    return lines
