"""The training layer: models made and judged.

Training and fine-tuning (:mod:`.train`) with its augmentations (:mod:`.augment`), packing a training set
(:mod:`.pack`), a U-Net's size model (:mod:`.train_size`) and the evaluation of predicted labels against
true ones (:mod:`.evaluate`).

May import: :mod:`cpsnake.export`, :mod:`cpsnake.engine` and below.
"""
