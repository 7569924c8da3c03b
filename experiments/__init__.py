"""Entry points (train / evaluate / animate / demo / personalize) and the Hydra configs in experiments/configs/."""
import os

# OpenMP busy-waiting makes small-tensor work 5-20x slower on shared CPUs; set before torch is imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
