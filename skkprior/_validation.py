"""Input checks shared by every module, and the one error template.

Every error raised on bad input says four things, in this order: what was wrong, what was
expected, what was given, and how to fix it::

    <what> must be <expected>. Got <given> instead. <fix>

Use :func:`error_message` to build the text, and the ``check_*`` helpers for the checks that
recur. Errors are raised from our code, before the input reaches torch, so the user never
sees a crash deep inside a library or a silent NaN.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch

__all__ = [
    "error_message",
    "check_finite_tensor",
    "check_positive",
    "check_probability",
    "check_device",
    "check_square",
    "describe",
]


def describe(value: Any) -> str:
    """Short description of ``value`` for an error message (shape for arrays, repr otherwise)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)):
        return f"an array of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def error_message(what: str, expected: str, got: Any, fix: str = "") -> str:
    """Build an error message from the template: what, expected, given, fix.

    Parameters
    ----------
    what : str
        The thing that was wrong, e.g. ``"prior_scale of KroneckerPriorClassifier"``.
    expected : str
        What it must be, e.g. ``"a positive finite float"``.
    got : object
        The value given; strings are inserted as they are, other objects are described.
    fix : str, default=""
        How to fix it.

    Returns
    -------
    str
        The message.

    Examples
    --------
    >>> error_message("temperature", "a positive float", -1.0, "Pass a value > 0.")
    'temperature must be a positive float. Got -1.0 instead. Pass a value > 0.'
    """
    given = got if isinstance(got, str) else describe(got)
    text = f"{what} must be {expected}. Got {given} instead."
    return f"{text} {fix}".rstrip() if fix else text


def check_positive(value: Any, name: str, *, allow_zero: bool = False, fix: str = "") -> float:
    """Return ``value`` as a float after checking it is a finite positive real number.

    Examples
    --------
    >>> check_positive(2, "prior_scale")
    2.0
    """
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        ok = float(value) >= 0 if allow_zero else float(value) > 0
    if not ok:
        expected = "a finite non-negative number" if allow_zero else "a finite positive number"
        raise ValueError(error_message(name, expected, value, fix or f"Pass {name} > 0."))
    return float(value)


def check_probability(value: Any, name: str, *, fix: str = "") -> float:
    """Return ``value`` as a float after checking it lies in the open interval (0, 1).

    Examples
    --------
    >>> check_probability(0.025, "delta")
    0.025
    """
    ok = isinstance(value, Real) and not isinstance(value, bool) and 0.0 < float(value) < 1.0
    if not ok:
        raise ValueError(
            error_message(name, "a number in the open interval (0, 1)", value,
                          fix or f"Pass {name} such as 0.025.")
        )
    return float(value)


def check_finite_tensor(tensor: torch.Tensor, name: str, *, fix: str = "") -> torch.Tensor:
    """Raise a ``ValueError`` naming ``name`` when ``tensor`` holds NaN or infinity.

    Examples
    --------
    >>> import torch
    >>> check_finite_tensor(torch.ones(2), "X").shape
    torch.Size([2])
    """
    if tensor.is_floating_point() or tensor.is_complex():
        if not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                error_message(name, "finite (no NaN or infinity)",
                              f"{n_bad} non-finite entries in {describe(tensor)}",
                              fix or "Remove or impute the non-finite values first.")
            )
    return tensor


def class_labels(y: Any, n: int) -> torch.Tensor:
    """``y`` as int64 class indices on the CPU: 1-D, ``n`` of them (one per row of ``X``), integral,
    non-negative (the range against the model's outputs: :func:`check_label_range`).

    Floats are accepted only when every value is an integer (``1.0``, not ``0.7``, which
    ``.long()`` would silently truncate to class 0).
    """
    if hasattr(y, "tocsr"):
        raise TypeError(error_message("y", "a dense 1-D array of class labels", "a sparse matrix",
                                      "Pass y.toarray().ravel()."))
    try:
        t = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(error_message("y", "a 1-D array or tensor of integer class labels",
                                      type(y).__name__)) from exc
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(error_message("y", f"a 1-D array of {n} labels (one per row of X)", describe(t),
                                       "Pass one class index per example, e.g. y.ravel()."))
    if n == 0:
        raise ValueError(error_message("X and y", "at least one example", "0 examples"))
    if t.is_floating_point():
        integral = torch.isfinite(t) & (t == t.round())
        if not bool(integral.all()):
            bad = "[" + ", ".join(f"{v:.6g}" for v in t[~integral][:3].tolist()) + "]"
            raise ValueError(error_message("y", "integer class labels 0 .. C-1 (floats only when integral)",
                                           f"non-integral values such as {bad}",
                                           "Encode the labels as class indices, e.g. with "
                                           "sklearn.preprocessing.LabelEncoder."))
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(error_message("y", "integer class labels 0 .. C-1", describe(t),
                                       "Encode the labels as class indices."))
    t = t.to(torch.int64).cpu()
    if bool((t < 0).any()):
        raise ValueError(error_message("y", "labels in 0 .. C-1", f"a minimum of {int(t.min())}",
                                       "Encode the labels as class indices 0 .. C-1."))
    return t


def check_label_range(y: torch.Tensor, n_classes: int) -> None:
    """Raise unless every label of ``y`` (from :func:`class_labels`) is below ``n_classes``."""
    if int(y.max()) >= n_classes:
        raise ValueError(error_message("y", f"labels in 0 .. {n_classes - 1} (the model has {n_classes} outputs)",
                                       f"a maximum of {int(y.max())}", "Encode the labels as 0 .. C-1."))


def check_square(matrix: Any, name: str) -> torch.Tensor:
    """Check that ``matrix`` is a finite square 2-D floating-point tensor and return it.

    Examples
    --------
    >>> import torch
    >>> check_square(torch.eye(3), "A_in").shape
    torch.Size([3, 3])
    """
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(error_message(name, "a torch.Tensor", type(matrix).__name__,
                                      "Convert it with torch.as_tensor(...)."))
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(error_message(name, "a non-empty square 2-D matrix", matrix,
                                       "Pass an (n, n) tensor."))
    if not matrix.is_floating_point():
        raise TypeError(error_message(name, "a floating-point tensor", matrix,
                                      "Convert it with .double() or .float()."))
    return check_finite_tensor(matrix, name)


def check_device(device: Any, name: str = "device") -> torch.device:
    """Return ``device`` as a ``torch.device`` after checking that it exists on this machine.

    A CUDA (or MPS) device that is not available, a CUDA index beyond the visible devices, or
    a string torch cannot parse raise a ``ValueError`` naming ``name``, instead of the
    ``AssertionError`` or ``RuntimeError`` torch raises when the first tensor is moved there.

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(error_message(name, "a torch device such as 'cpu', 'cuda' or 'cuda:0'",
                                           repr(device), f"torch could not parse it ({str(exc)[:80]}).")) from exc
    else:
        raise TypeError(error_message(name, "a torch.device or a device string such as 'cpu' or 'cuda'",
                                      type(device).__name__))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(error_message(name, "an available device", repr(str(dev)),
                                           "CUDA is not available on this machine "
                                           "(torch.cuda.is_available() is False); use device='cpu'."))
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(error_message(name, f"a visible CUDA device (indices 0 .. {count - 1})",
                                           repr(str(dev)), "Use device='cuda' or a smaller index."))
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(error_message(name, "an available device", repr(str(dev)),
                                           "MPS is not available on this machine; use device='cpu'."))
    return dev
