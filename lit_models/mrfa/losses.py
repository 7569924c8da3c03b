"""Unsupervised-keypoint regularisers used by MRFA's prior (FOMM Sec. 3.4, TPSMM Sec. 3.4).

* ``loss_equivariance_value``: ``|p^D - T(p^{T(D)})|_1`` for a random deformation T of the driving frame.
* ``loss_equivariance_jacobian``: ``|I - (J^D)^{-1} (∂T(p) J^{T(D)})|_1`` (FOMM keypoints only).
* ``loss_bg``: TPSMM's background-motion consistency ``|A_bg(S→D) A_bg(D→S) - I|_1``.
"""
from __future__ import annotations

import torch

from lit_models.common.keypoints import RandomTransform


def equivariance_losses(kp_detector, driving: torch.Tensor, kp_driving: dict, *, use_value: bool, use_jacobian: bool,
                        sigma_affine: float, sigma_tps: float, points_tps: int) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    if not (use_value or use_jacobian):
        return terms
    # official MRFA (modules/model.py Transform): grid_sample(frame, grid, padding_mode="reflection"), i.e.
    # align_corners=False on the torch versions it runs on
    transform = RandomTransform(driving.shape[0], sigma_affine, sigma_tps, points_tps, device=driving.device,
                                align_corners=False)
    kp_t = kp_detector(transform.transform_frame(driving))
    if use_value:
        terms["loss_equivariance_value"] = (kp_driving["value"] - transform.warp_coordinates(kp_t["value"])).abs().mean()
    if use_jacobian and "jacobian" in kp_t:
        jac_t = transform.jacobian(kp_t["value"]) @ kp_t["jacobian"]
        value = torch.inverse(kp_driving["jacobian"].float()) @ jac_t.float()
        eye = torch.eye(2, device=value.device, dtype=value.dtype)
        terms["loss_equivariance_jacobian"] = (eye - value).abs().mean()
    return terms


def bg_loss(bg_predictor, source: torch.Tensor, driving: torch.Tensor, bg_param: torch.Tensor) -> torch.Tensor:
    reverse = bg_predictor(driving, source)
    eye = torch.eye(3, device=bg_param.device, dtype=bg_param.dtype)
    return (bg_param @ reverse - eye).abs().mean()
