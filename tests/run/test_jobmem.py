"""The workflow's memory requests (cpsnake.run.jobmem): an image in blocks asks for its block's memory, not its
own, so a slide's jobs stay schedulable; an image held whole asks as before. The workflow test
(test_large_images_run_as_block_jobs_with_the_one_process_labels) checks the jobs' peaks against them."""

from __future__ import annotations

import pytest

from cpsnake.run.jobmem import block_job_mb, step_mb

STEPS = ("normalize", "infer", "reconstruct", "rois", "measure", "overlay")


def request(step, side, block=0, channels=1):
    return step_mb(step, pixels=side * side, width=side, channels=channels, block=block)


def test_an_image_in_blocks_asks_for_a_blocks_memory_whatever_its_size():
    for step in ("infer", "reconstruct", "overlay"):  # no term that grows with the image
        assert request(step, 20_000, 2048) == request(step, 100_000, 2048), step
    assert block_job_mb(2048, None, 1) == int(1500 + 100 * 2648**2 / 1e6)  # the read region: 300 px each side
    assert block_job_mb(2048, 500, 1) == int(1500 + 100 * 3048**2 / 1e6)  # a halo above 300 px counts
    assert request("reconstruct", 100_000, 2048) == request("reconstruct", 2648)  # pass 2 of one read region
    assert request("normalize", 100_000, 2048) == int(300 + 12 * 2048 * 100_000 / 1e6)  # one band of rows
    # rois and measure: only the records kept per object grow, 1 KB per 256 px
    assert request("rois", 100_000, 2048) == request("measure", 100_000, 2048) == int(500 + 1024 * 1e10 / 256 / 1e6)


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_a_slide_in_blocks_asks_for_far_less_than_held_whole(side):
    blocks = {s: request(s, side, 2048) for s in STEPS}
    whole = {s: request(s, side) for s in STEPS}
    assert max(blocks.values()) < 45_000 and whole["reconstruct"] >= 29_000
    for s in STEPS:
        assert blocks[s] <= whole[s], (s, blocks[s], whole[s])
    if side == 20_000:  # every job of a 20,000 px slide fits a 4 GB node
        assert max(blocks.values()) < 4000, blocks


def test_an_image_held_whole_asks_per_sample():
    assert request("reconstruct", 1000) == int(1000 + 70 * 1e6 / 1e6)
    assert request("infer", 1000, channels=3) == int(2000 + 100 * 3e6 / 1e6)
    assert step_mb("measure", pixels=0, width=0, channels=None) == 300  # an empty batch: the base
