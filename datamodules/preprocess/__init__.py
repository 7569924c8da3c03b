"""Official input preprocessing, one module per method: given the detections the official code uses, the
crops and tensors it feeds the networks."""
