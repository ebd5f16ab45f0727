"""The one ``--device`` resolver (:func:`cpsnake.models.device.resolve_device`): the network's devices and the
reconstruction's (CUDA or its CPU path), on machines with and without CUDA and MPS (availability faked)."""

from __future__ import annotations

import sys

import pytest

from cpsnake.errors import CpsnakeError
from cpsnake.models.device import resolve_device, resolve_dtype

torch = pytest.importorskip("torch")
RECONSTRUCT = ("cuda",)


@pytest.fixture
def machine(monkeypatch):
    """Set which GPUs this machine seems to have: ``machine(cuda=..., mps=...)``."""

    def set_(*, cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_


@pytest.mark.parametrize(
    "cuda, mps, network, reconstruction",
    [
        (False, False, "cpu", None),
        (False, True, "mps", None),
        (True, False, "cuda", "cuda"),
        (True, True, "cuda", "cuda"),
    ],
)
def test_auto_takes_the_first_kind_the_caller_runs_on(machine, cuda, mps, network, reconstruction):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(network)
    found = resolve_device("auto", kinds=RECONSTRUCT)
    assert (found if found is None else found.type) == reconstruction


def test_named_devices_as_given_or_none_outside_the_callers_kinds(machine):
    machine(cuda=True, mps=True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("cuda:1", kinds=RECONSTRUCT) == torch.device("cuda:1")
    assert resolve_device("mps", kinds=RECONSTRUCT) is None and resolve_device("cpu", kinds=RECONSTRUCT) is None
    assert resolve_device(None) is None


def test_a_kind_outside_the_callers_needs_no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert resolve_device("cpu", kinds=RECONSTRUCT) is None
    assert resolve_device("mps", kinds=RECONSTRUCT) is None


@pytest.mark.parametrize(
    "name, kinds, message",
    [
        ("cuda", None, "--device cuda: found no CUDA device; use --device auto or cpu"),
        ("cuda:0", RECONSTRUCT, "--device cuda:0: found no CUDA device; use --device auto or cpu"),
        ("mps", None, "--device mps: found no MPS device; use --device auto or cpu"),
        ("bogus", None, "--device bogus: unknown device; expected auto, cpu or cuda[:N]"),
        ("bogus", RECONSTRUCT, "--device bogus: unknown device; expected auto, cpu or cuda[:N]"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(machine, name, kinds, message):
    machine(cuda=False, mps=False)
    with pytest.raises(CpsnakeError) as err:
        resolve_device(name, kinds=kinds)
    assert str(err.value) == message


def test_precision_follows_the_device():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
    with pytest.raises(CpsnakeError, match="--precision half: unknown"):
        resolve_dtype("half", torch.device("cpu"))
