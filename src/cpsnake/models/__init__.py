"""The models layer: network families side by side, their files, and the weights registry.

Cellpose-SAM (:mod:`.cpsam`: SAM's ViT encoder with 8 x 8 patches and the flow readout) and the classic
Cellpose U-Net (:mod:`.unet`), told apart by a file's keys and loaded (:mod:`.registry`); state files read
strictly and weights-only (:mod:`.state`), checked before ``torch.load`` (:mod:`.statefile`); registry names,
downloads and the sha256-checked cache (:mod:`.weights`); where and in which precision a network runs
(:mod:`.device`, the one ``--device`` resolver). This file imports nothing, so that :mod:`.weights`,
:mod:`.statefile` and :mod:`.device` are reached without torch (about 2 s and 0.9 GB).

May import: :mod:`cpsnake.io` and below.
"""
