"""The datamodule a run config's ``data`` node names: ``data._target_`` (default ``datamodules.VideoClipDataModule``),
a ``LightningDataModule`` class constructed with the whole data node."""
from __future__ import annotations

from typing import Any


class DataTargetError(ValueError):
    """``data._target_`` is unset, cannot be imported, or is not a LightningDataModule class."""


def datamodule_class(data_cfg: Any) -> type:
    """The class ``data._target_`` names (``toolbox.locate``: hydra.utils' lookup); a ``DataTargetError`` naming
    ``data._target_`` when it is unset, does not import, or is not a ``LightningDataModule``."""
    import lightning as L

    from toolbox.locate import locate

    target = data_cfg.get("_target_") if hasattr(data_cfg, "get") else getattr(data_cfg, "_target_", None)
    if not target:
        raise DataTargetError("data._target_ is not set (a LightningDataModule class path, e.g. "
                              "datamodules.VideoClipDataModule)")
    try:
        cls = locate(str(target), want_class=True)
    except LookupError as e:
        raise DataTargetError(f"data._target_={target!r} cannot be imported as a class ({e})") from None
    if not issubclass(cls, L.LightningDataModule):
        raise DataTargetError(f"data._target_={target!r} is not a LightningDataModule class")
    return cls


def build_datamodule(data_cfg: Any):
    """``data._target_``'s class built with the data node (``VideoClipDataModule(data_cfg)`` by default)."""
    return datamodule_class(data_cfg)(data_cfg)
