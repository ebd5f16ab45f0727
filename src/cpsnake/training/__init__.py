"""The training layer: models made and judged.

Training data (:mod:`.data`: image/mask pairs, cached targets, augmented batches, with the augmentations of
:mod:`.augment`), the training loop and its command (:mod:`.train`), packing a training set (:mod:`.pack`), a
U-Net's size model (:mod:`.train_size`) and the evaluation of predicted labels against true ones
(:mod:`.evaluate`).

May import: :mod:`cpsnake.export`, :mod:`cpsnake.engine` and below.
"""
