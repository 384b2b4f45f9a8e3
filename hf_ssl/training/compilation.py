"""Whether a training run compiles its model with ``torch.compile``, and compiling it so that a run never fails for it.

The model is compiled in place (``nn.Module.compile``): its forward, the method's loss included,
becomes one graph per input shape, fused by inductor; backward goes through AOTAutograd. Parameter
names, checkpoints and the saved model are unchanged, and the backbone alone (evaluations, the
saved encoder) stays eager.

A compilation problem (no C++ compiler for inductor on CPU, an operation dynamo cannot trace, a
backend error) never stops a run: dynamo's ``suppress_errors`` runs the affected frame eagerly and
logs a warning. Compilation costs seconds to minutes at the first steps (once per input shape), so
it pays only over enough steps; ``--compile auto`` decides with the measured break-even in `COMPILE_COSTS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

logger = logging.getLogger(__name__)

CompileChoice = Literal["auto", "yes", "no"]
COMPILE_CHOICES: tuple[str, ...] = get_args(CompileChoice)


@dataclass(frozen=True)
class CompileCost:
    """What compiling costs against what it saves for one method on one device kind, measured with the trainer.

    Args:
        break_even_steps: steps after which the compiled run has caught up with the eager one
            (compile seconds / seconds saved per step); None where compiled steps are not faster.
        measured: where the number comes from (host, study, methods).
    """

    break_even_steps: int | None
    measured: str


# ``{(device kind, method): cost}`` from `benchmarks/compile_study.py` on each method's bundled run
# (48 px, batch 64; benchmarks/results/compile_study-amd-epyc-2cores.md, README "torch.compile in the
# trainer"); a pair without an entry is never compiled by ``auto``. On a larger model the compile time
# grows less than the step time, so the break-even in steps is, by estimate, no larger. On CPU only
# SplitMask was faster in every back-to-back pair; the other methods stayed within the host's drift.
_CPU_STUDY = "AMD EPYC, 2 cores, bundled run"
COMPILE_COSTS: dict[tuple[str, str], CompileCost] = {
    **{("cpu", method): CompileCost(break_even_steps=None, measured=f"{_CPU_STUDY}: 0.68-1.09x, within the host's drift")
       for method in ("barlow_twins", "beit", "byol", "dino", "dual_encoder", "mae", "moco_v3", "simclr", "simmim",
                      "simsiam", "vicreg")},
    ("cpu", "splitmask"): CompileCost(break_even_steps=2200, measured=f"{_CPU_STUDY}: 1.19x for 58 s of compiling"),
}
# ``auto`` compiles a run of at least this many times the break-even steps, so that the time saved
# clearly exceeds the time spent compiling.
BREAK_EVEN_MARGIN = 2


def resolve_compile(choice: CompileChoice, device: torch.device, method: str, max_steps: int) -> tuple[bool, str]:
    """Whether to compile, and why (a phrase for the printed plan).

    Args:
        choice: ``"yes"``, ``"no"`` or ``"auto"`` (compile where `COMPILE_COSTS` says a run of
            `max_steps` steps of `method` pays the compilation back).
        max_steps: the run's optimizer steps.
    """
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "yes", "given"
    cost = COMPILE_COSTS.get((device.type, method))
    where = f"{method} on {device.type}"
    if cost is None:
        return False, f"--compile auto: not measured for {where}"
    if cost.break_even_steps is None:
        return False, f"--compile auto: never pays back for {where} ({cost.measured})"
    if max_steps < BREAK_EVEN_MARGIN * cost.break_even_steps:
        return False, (f"--compile auto: pays back after about {cost.break_even_steps} steps for {where}, "
                       f"too close to this run's {max_steps}")
    return True, f"--compile auto: pays back after about {cost.break_even_steps} steps for {where}"


def compile_in_place(model: nn.Module, backend: str | object = "inductor") -> None:
    """``torch.compile`` `model`'s forward in place, falling back to eager wherever compiling fails.

    Args:
        backend: the dynamo backend (a name, or a callable for tests).
    """
    # A failed compilation runs that frame eagerly (with a warning) instead of raising: the run goes on.
    torch._dynamo.config.suppress_errors = True
    model.compile(backend=backend)
    logger.info("torch.compile: %s compiled in place (backend %s); the first steps include compiling",
                type(model).__name__, getattr(backend, "__name__", backend))


__all__ = ["BREAK_EVEN_MARGIN", "COMPILE_CHOICES", "COMPILE_COSTS", "CompileChoice", "CompileCost", "compile_in_place", "resolve_compile"]
