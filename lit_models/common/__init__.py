"""Blocks shared by several methods live here once (keypoints, dense motion, attention processors, samplers)."""
