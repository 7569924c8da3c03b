"""Region metrics of InterAnimate's evaluation — moved to ``eval.regions`` (one implementation, used by the
evaluation suite's ``l1_contact`` / ``ssim_contact`` / ``lpips_<net>_contact``); re-exported here so existing imports
keep working. ``mean_abs_cosine(L)``: mean |cos| between distinct learned latents (``interaction``).
"""
from __future__ import annotations

from eval.regions import (contact_region, dilate, masked_l1, masked_lpips, masked_ssim,  # noqa: F401
                          region_metrics)
from lit_models.interanimate.interaction import mean_abs_cosine  # noqa: F401

__all__ = ["contact_region", "dilate", "masked_l1", "masked_lpips", "masked_ssim", "region_metrics", "mean_abs_cosine"]
