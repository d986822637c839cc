"""mtl: train and compare multi-task learning methods (MGDA-UB and its rivals)."""

__version__ = "0.1.0"
