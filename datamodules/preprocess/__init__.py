"""Official preprocessing steps per method (face boxes → crops → network inputs)."""
