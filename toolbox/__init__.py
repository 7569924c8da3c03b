"""Neutral helpers every package may use (atomic writes, run-directory locks).

`toolbox` imports none of `datamodules`, `lit_models`, `eval`, `experiments`: it sits below all of them.
"""
