"""From whatever a model's forward returns to the class logits ``(N, K)`` that every method explains.

torchvision classifiers return a tensor; GoogLeNet and Inception-v3 in train mode a named tuple whose first
field is the logits; Hugging Face image classifiers an object (a dict subclass) holding ``logits``. Anything
else needs the user's ``output=``: a callable from the model's output to the logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from torch import Tensor

OutputToLogits = Callable[[Any], Tensor]


def check_output(output) -> OutputToLogits | None:
    """``output=`` as given by the user: None or a callable."""
    if output is not None and not callable(output):
        raise TypeError(
            f"output: expected a callable from the model's output to its logits (N, K), or None; "
            f"got {type(output).__name__}"
        )
    return output


def _found_logits(value):
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return value[0]
    if isinstance(value, Mapping) and "logits" in value:
        return value["logits"]
    return getattr(value, "logits", value)


def logits_of(value, output: OutputToLogits | None = None) -> Tensor:
    """The ``(N, K)`` logits in a model's output ``value``; ``output`` is the user's converter, if any."""
    logits = _found_logits(value) if output is None else output(value)
    if isinstance(logits, Tensor) and logits.dim() == 2:
        return logits
    what = f"{type(logits).__name__} of shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(value).__name__
    if output is not None:
        raise TypeError(f"output: the callable given returned {what}; it must return the logits, a tensor (N, K)")
    raise TypeError(
        f"model: expected its forward to return class logits (N, K) — a tensor, a tuple or list whose first item "
        f"is that tensor, or an object with .logits — but it returned {what}; pass output=, a callable that "
        "takes the model's output and returns the logits"
    )
