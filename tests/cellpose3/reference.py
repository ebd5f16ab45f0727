"""Reference computations with cellpose 3.1.1.3, run in a subprocess (cellpose 3 and 4 share a package name).

    PYTHONPATH=.venv/cellpose3 python tests/cellpose3/reference.py REQUEST.json
    PYTHONPATH=.venv/cellpose3 python tests/cellpose3/reference.py --serve

With ``--serve`` it answers requests until its stdin closes: one REQUEST path per line in, one line
``ok`` or ``error`` out (anything else printed, tracebacks included, goes to stderr). Importing cellpose 3
takes about 9 s here (its numba functions compile at import), so the tests keep one server for the session
instead of a process per request. Each request is computed as in a fresh process: the module patches an
``nbase`` request makes are undone after it.

REQUEST holds ``op`` and its arguments; the outputs go to the ``out`` .npz file it names:

* ``make_net``: a cellpose 3 ``CPnet`` with seeded random weights and BatchNorm running statistics,
  saved as cellpose saves models (``torch.save(net.state_dict())``) to ``state``;
* ``net``: ``CPnet.forward`` (mkldnn off) on the tiles in ``inputs`` (.npy): ``y``, ``style``;
* ``run_net``: ``cellpose.core.run_net`` on ``image`` (.npy, Lz x Ly x Lx x nchan): ``y``, ``style``;
* ``eval``: ``CellposeModel(pretrained_model=state).eval(image, channels, diameter, ...)`` without masks:
  ``dP``, ``cellprob``, ``style``;
* ``eval3d``: the same with ``do_3D=True`` (``z_axis=0``, ``anisotropy``) on a stack: ``dP`` (3, Z, Y, X),
  ``cellprob``;
* ``size``: ``SizeModel(model, pretrained_size=size).eval(image, channels)``: ``diam``, ``diam_style``;
  for both, ``nbase`` (optional) gives a network's widths where they are not cellpose 3's ``[2, 32, 64,
  128, 256]`` (cellpose 3 builds only those widths and allocates 256 style values in ``run_net``; the
  script builds ``CPnet`` with the file's widths and sizes those two style buffers to its last width);
* ``follow``: ``dynamics.follow_flows(step, inds, niter, interp=False)`` on ``step`` (.npy, 2 x Y x X) from the
  pixels where ``cellprob`` > 0 (.npy): ``p``.
"""

import json
import sys

import numpy as np
import torch


def main(request: str) -> None:
    import cellpose
    from cellpose import core, models, resnet_torch

    assert cellpose.version.startswith("3."), cellpose.version
    req = json.loads(open(request).read())
    op, out = req["op"], {}
    torch.set_num_threads(1)
    if op == "make_net":
        torch.manual_seed(req["seed"])
        net = resnet_torch.CPnet(list(req["nbase"]), 3, 3, mkldnn=False, diam_mean=req["diam_mean"])
        g = torch.Generator().manual_seed(req["seed"])
        with torch.no_grad():
            for name, t in net.state_dict().items():
                if name.endswith("running_mean"):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                elif name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith("num_batches_tracked"):
                    t.fill_(7)
                elif name.endswith(".weight") and t.ndim == 1:  # BatchNorm scale
                    t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
                elif name.endswith(".bias"):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            net.diam_labels.data[:] = req["diam_labels"]
        torch.save(net.state_dict(), req["state"])
        return
    if op in ("net", "run_net"):
        net = resnet_torch.CPnet(list(req["nbase"]), 3, 3, mkldnn=False)
        net.load_state_dict(torch.load(req["state"], weights_only=True))
        net.eval()
        if op == "net":
            with torch.no_grad():
                y, style = net(torch.from_numpy(np.load(req["inputs"])))[:2]
            out = {"y": y.numpy(), "style": style.numpy()}
        else:
            y, style = core.run_net(
                net,
                np.load(req["image"]),
                batch_size=req.get("batch_size", 8),
                augment=req["augment"],
                tile_overlap=req["tile_overlap"],
                bsize=224,
                rsz=req.get("rsz"),
            )
            out = {"y": y, "style": style}
    elif op == "follow":
        from cellpose import dynamics

        step = np.load(req["step"])
        inds = np.nonzero(np.load(req["cellprob"]) > 0)
        out = {"p": dynamics.follow_flows(step, inds, niter=req["niter"], interp=False)}
    elif op in ("eval", "eval3d", "size"):
        if "nbase" in req:  # cellpose 3 fixes the widths after the input at 32-256; take the file's
            cpnet = models.CPnet
            models.CPnet = lambda nbase, *a, **k: cpnet(list(req["nbase"]), *a, **k)
            width = req["nbase"][-1]
            if width != 256:  # run_net allocates its style buffers as (n, 256): size them to the network

                class _NP:
                    def __getattr__(self, name):
                        return getattr(np, name)

                    def zeros(self, shape, *a, **k):
                        shape = (shape[0], width) if len(shape) == 2 and shape[1] == 256 else shape
                        return np.zeros(shape, *a, **k)

                core.np = _NP()
        model = models.CellposeModel(gpu=False, pretrained_model=req["state"], nchan=req.get("nbase", [2])[0])
        model.net.mkldnn = False
        image = np.load(req["image"])
        if op == "eval":
            _, flows, style = model.eval(
                image,
                channels=req["channels"],
                diameter=req.get("diameter"),
                augment=req.get("augment", False),
                compute_masks=False,
                channel_axis=req.get("channel_axis"),
            )
            out = {"dP": flows[1], "cellprob": flows[2], "style": style}
        elif op == "eval3d":
            _, flows, _ = model.eval(
                image,
                channels=req["channels"],
                diameter=req.get("diameter"),
                z_axis=0,
                channel_axis=req.get("channel_axis"),
                do_3D=True,
                anisotropy=req.get("anisotropy"),
                compute_masks=False,
            )
            out = {"dP": flows[1], "cellprob": flows[2]}
        else:
            size = models.SizeModel(model, pretrained_size=req["size"])
            diam, diam_style = size.eval(image, channels=req["channels"], channel_axis=req.get("channel_axis"))
            out = {"diam": np.array(diam), "diam_style": np.array(diam_style)}
    np.savez(req["out"], **out)


def serve() -> None:
    """Answer the requests named on stdin, one per line, with ``ok`` or ``error`` on stdout."""
    import os
    import traceback

    from cellpose import core, models

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what cellpose prints goes to stderr, never into the answers
    originals = (models.CPnet, core.np)
    for line in sys.stdin:
        try:
            main(line.strip())
            answer = "ok"
        except Exception:
            traceback.print_exc()
            answer = "error"
        finally:
            models.CPnet, core.np = originals
        sys.stderr.flush()
        answers.write(answer + "\n")
        answers.flush()


if __name__ == "__main__":
    serve() if sys.argv[1] == "--serve" else main(sys.argv[1])
